;; 80 MiB of stdout, past the 64 MiB frame limit: {"data":"xxx...
;; The same 1 MiB buffer is written 80 times, so it needs little memory; a
;; refused write (the runner's output cap) ends it.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 17)
  (data (i32.const 64) "{\"data\":\"")
  (func $write_all (param $at i32) (param $len i32) (result i32)
    (local $errno i32)
    (loop $more
      (i32.store (i32.const 0) (local.get $at)) (i32.store (i32.const 4) (local.get $len))
      (local.set $errno (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (if (local.get $errno) (then (return (local.get $errno))))
      (local.set $at (i32.add (local.get $at) (i32.load (i32.const 8))))
      (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 8))))
      (br_if $more (i32.gt_s (local.get $len) (i32.const 0))))
    (i32.const 0))
  (func (export "_start") (local $i i32)
    (memory.fill (i32.const 65536) (i32.const 120) (i32.const 1048576))  ;; x
    (drop (call $write_all (i32.const 64) (i32.const 9)))
    (loop $more
      (br_if 1 (call $write_all (i32.const 65536) (i32.const 1048576)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 80))))))
