;; A WAGI module in a wws folder (cgi.toml says protocol = "wagi"): its file
;; route /cgi, plus /cgi/sub and /cgi/deep/... from its _routes export.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "Content-Type: text/plain\n\nbase\n")
  (data (i32.const 200) "Content-Type: text/plain\n\nsub\n")
  (data (i32.const 300) "Content-Type: text/plain\n\ndeep\n")
  (data (i32.const 400) "/sub on_sub\n/deep/... on_deep\n")
  (func $print (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (call $print (i32.const 100) (i32.const 31)))
  (func (export "on_sub") (call $print (i32.const 200) (i32.const 30)))
  (func (export "on_deep") (call $print (i32.const 300) (i32.const 31)))
  (func (export "_routes") (call $print (i32.const 400) (i32.const 30))))
