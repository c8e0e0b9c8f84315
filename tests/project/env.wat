;; Answers with the number of environment variables it can see (one digit).
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{\"data\":\"?\"}")
  (func (export "_start")
    (drop (call $sizes (i32.const 32) (i32.const 36)))
    (i32.store8 (i32.const 73) (i32.add (i32.const 48) (i32.load (i32.const 32))))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 12))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
