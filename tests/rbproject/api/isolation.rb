$seen = []

def worker(req)
  $seen << req.url
  Response.new("seen=#{$seen.length} random=#{rand}")
end
