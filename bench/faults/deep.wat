;; Hostile output: valid-looking kit JSON with a value nested 100,000 levels deep.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 64) "{\"data\":\"x\",\"n\":")
  (func (export "_start")
    ;; prefix is 16 bytes at 64; brackets from 80
    (memory.fill (i32.const 80) (i32.const 91) (i32.const 100000))
    (memory.fill (i32.const 100080) (i32.const 93) (i32.const 100000))
    (i32.store8 (i32.const 200080) (i32.const 125))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 200017))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
