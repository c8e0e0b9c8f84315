def worker(req)
  Response.new("unterminated"
end
