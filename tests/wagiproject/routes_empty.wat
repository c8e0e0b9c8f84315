;; A WAGI module whose _routes export prints nothing: a startup error.
(module
  (memory (export "memory") 1)
  (func (export "_start"))
  (func (export "_routes")))
