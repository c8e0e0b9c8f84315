;; A WAGI module importing a function nobody provides: a startup error.
(module
  (import "env" "nope" (func $nope))
  (memory (export "memory") 1)
  (func (export "_start") (call $nope)))
