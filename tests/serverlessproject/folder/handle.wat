;; In a wws folder, a module importing env.response_set_body is a
;; serverless-wasm handle module on its file route (/handle).
(module
  (import "env" "memory" (memory 1))
  (import "env" "response_set_status_line" (func $status (param i32 i32 i64)))
  (import "env" "response_set_body" (func $body (param i32 i64)))
  (data (i32.const 0) "from a handle module in a folder\n")
  (func (export "handle")
    (call $status (i32.const 202) (i32.const 0) (i64.const 0))
    (call $body (i32.const 0) (i64.const 33))))
