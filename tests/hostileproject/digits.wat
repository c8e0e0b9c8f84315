;; A status with 5,000 digits: {"data":"ok","status":999...9}
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 42) "{\"data\":\"ok\",\"status\":")
  (func (export "_start")
    ;; the prefix ends at 64, the digits follow it, then the closing brace
    (memory.fill (i32.const 64) (i32.const 57) (i32.const 5000))  ;; 9
    (i32.store8 (i32.const 5064) (i32.const 125))
    (i32.store (i32.const 0) (i32.const 42)) (i32.store (i32.const 4) (i32.const 5023))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
