"""What executors share: the engine and its memory layout, the compiled-module cache, interpreter
snapshots (QuickJS, CPython, Ruby), outbound HTTP, the epoch ticker, raw wasmtime calls."""
