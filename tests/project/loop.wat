;; Runaway CPU: never returns; stopped by fuel or the epoch deadline.
(module (func (export "_start") (loop $forever (br $forever))))
