;; An allocator that grows 64 pages (4 MiB) at a time and aborts when a grow
;; is refused, as allocators that grow in large steps do.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 64)) (i32.const -1))))
    unreachable))
