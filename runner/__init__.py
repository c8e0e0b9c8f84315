"""The sandboxed child process: ``python -m runner``. Synchronous, no trio, one request at a time."""
