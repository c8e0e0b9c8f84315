# /python/counter: a visit counter in the worker's KV namespace (counter.toml).
def worker(request):
    count = int(Cache.get("visits") or 0) + 1
    Cache.set("visits", count)
    response = Response(f"This page was visited {count} times (Python)")
    response.headers["content-type"] = "text/plain; charset=utf-8"
    return response
