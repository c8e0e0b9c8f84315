;; Builds its response through host calls but defines its own memory instead
;; of importing env.memory: refused at load.
(module
  (import "env" "response_set_body" (func $body (param i32 i64)))
  (memory (export "memory") 1)
  (func (export "handle") (call $body (i32.const 0) (i64.const 0))))
