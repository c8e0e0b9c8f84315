;; Increments a global and a memory cell, then answers with both: in a fresh
;; instance per request, every request sees "11".
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $count (mut i32) (i32.const 0))
  (data (i32.const 64) "{\"data\":\"??\"}")
  (func (export "_start")
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (i32.const 1024) (i32.add (i32.load (i32.const 1024)) (i32.const 1)))
    (i32.store8 (i32.const 73) (i32.add (i32.const 48) (global.get $count)))
    (i32.store8 (i32.const 74) (i32.add (i32.const 48) (i32.load (i32.const 1024))))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 13))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
