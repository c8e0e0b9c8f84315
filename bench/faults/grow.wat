;; Memory bomb: grows memory a page at a time until refused, then aborts as a
;; C allocator would.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))
