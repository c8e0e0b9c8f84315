;; Imports a function the serverless-wasm host does not have: refused at load.
(module
  (import "env" "memory" (memory 1))
  (import "env" "response_set_body" (func $body (param i32 i64)))
  (import "env" "nope" (func $nope))
  (func (export "handle") (call $nope)))
