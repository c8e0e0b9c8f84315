;; The noisy neighbour: burns CPU until a limit stops it (or forever, in a server without limits).
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))
