def worker(req)
  Response.new("MESSAGE=#{ENV['MESSAGE']} HOME=#{ENV['HOME'].inspect}")
end
