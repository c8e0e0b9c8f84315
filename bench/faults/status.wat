;; Hostile output: a "status" with 5,000 digits.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{\"data\":\"x\",\"status\":")
  (func (export "_start")
    ;; prefix is 21 bytes at 64; digits from 85
    (memory.fill (i32.const 85) (i32.const 57) (i32.const 5000))
    (i32.store8 (i32.const 5085) (i32.const 125))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 5022))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
