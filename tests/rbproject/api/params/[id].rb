def worker(req)
  Response.ok("id=#{req.params['id']}")
end
