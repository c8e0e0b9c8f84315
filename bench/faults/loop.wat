;; Endless loop. Its TOML gives it far more fuel than 1.5 s of work, so the
;; wall clock (epoch interruption at timeout_ms) is what must stop it.
(module (func (export "_start") (loop $forever (br $forever))))
