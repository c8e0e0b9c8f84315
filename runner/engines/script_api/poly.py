# The worker API of wws Python workers (Request, Response, Cache), written
# from the specification. The runner writes it to /src/poly.py and imports
# it into the worker's globals, as wws's wrapper does.
import base64
import json
import sys

# wws's newer polyfill sends a bytes body as base64; the older one cannot
# (json.dumps raises TypeError). The runner sets this per .wws.toml.
BYTES_AS_BASE64 = True


class Cache:
    """The worker's KV namespace for this request (strings only)."""

    kv = {}

    @staticmethod
    def init(kv):
        Cache.kv = dict(kv)

    @staticmethod
    def get(key):
        return Cache.kv.get(key)

    @staticmethod
    def set(key, value):
        Cache.kv[key] = str(value)

    @staticmethod
    def dump():
        return Cache.kv


class Request:
    def __init__(self, input):
        self.method = input["method"]
        self.url = input["url"]
        self.body = input["body"]
        self.headers = input["headers"]
        self.params = input["params"]
        Cache.init(input["kv"])


class Response:
    def __init__(self, body):
        self.body = body
        self.status_code = 200
        self.headers = {}

    def to_json(self):
        out = {
            "data": self.body,
            "status": self.status_code,
            "headers": self.headers,
            "kv": Cache.dump(),
        }
        if BYTES_AS_BASE64:
            out["base64"] = False
            if isinstance(self.body, bytes):
                out["data"] = base64.b64encode(self.body).decode("ascii")
                out["base64"] = True
        return json.dumps(out)
