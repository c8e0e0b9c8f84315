def helper
  raise ArgumentError, "secret detail 42"
end

def worker(req)
  helper
end
