def worker(req)
  res = Response.not_found("not here")
  res.headers["x_custom_header"] = "underscores become dashes"
  res
end
