def worker(req)
  res = Response.new("method=#{req.method}\nurl=#{req.url}\nagent=#{req.headers['user-agent']}\nbody=#{req.body}")
  res.headers["x_generated_by"] = "ruby"
  res.headers["content_type"] = "text/plain"
  res
end
