"""One executor per worker contract (wws compiled, JavaScript, Python/Ruby, WAGI,
serverless-wasm) behind one small interface (``base.py``)."""
