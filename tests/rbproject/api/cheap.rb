def worker(req)
  Response.new("Hello from Ruby")
end
