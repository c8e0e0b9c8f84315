# /ruby/counter: a visit counter in the worker's KV namespace (counter.toml).
def worker(req)
  count = Cache.get("visits").to_i + 1
  Cache.set("visits", count)
  res = Response.new("This page was visited #{count} times (Ruby)")
  res.headers["content-type"] = "text/plain; charset=utf-8"
  res
end
