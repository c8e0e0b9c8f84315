def worker(req)
  loop { }
end
