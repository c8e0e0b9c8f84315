;; wws protocol output nested 100,000 levels deep:
;; {"data":"ok","x":[[[...]]]}
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 64) "{\"data\":\"ok\",\"x\":")
  (func $write_all (param $at i32) (param $len i32)
    ;; fd_write may write less than asked; loop until done or an error.
    (loop $more
      (i32.store (i32.const 0) (local.get $at)) (i32.store (i32.const 4) (local.get $len))
      (br_if 1 (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $at (i32.add (local.get $at) (i32.load (i32.const 8))))
      (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 8))))
      (br_if $more (i32.gt_s (local.get $len) (i32.const 0)))))
  (func (export "_start")
    (memory.fill (i32.const 4096) (i32.const 91) (i32.const 100000))    ;; [
    (memory.fill (i32.const 104096) (i32.const 93) (i32.const 100000))  ;; ]
    (i32.store8 (i32.const 204096) (i32.const 125))                     ;; }
    (call $write_all (i32.const 64) (i32.const 17))
    (call $write_all (i32.const 4096) (i32.const 200001))))
