def worker(req)
  res = Response.new((0..255).to_a.pack("C*"))
  res.headers["content-type"] = "application/octet-stream"
  res
end
