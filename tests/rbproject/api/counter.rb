def worker(req)
  count = Cache.get("count").to_i + 1
  Cache.set("count", count)
  raise "this request fails after writing" if req.url.include?("fail")
  Response.new("count=#{count}")
end
