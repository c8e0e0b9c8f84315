# /ruby: a page from a Ruby worker (wws's worker API: worker(req) -> Response).
# Needs the Ruby runtime: wws-supervisor runtimes install ruby
require "cgi"

def worker(req)
  agent = CGI.escapeHTML(req.headers["user-agent"] || "unknown")
  res = Response.new(<<~HTML)
    <!doctype html>
    <title>Ruby worker</title>
    <h1>Hello from Ruby</h1>
    <p>#{req.method} #{CGI.escapeHTML(req.url)}</p>
    <p>Your client: #{agent}</p>
  HTML
  res.headers["x-generated-by"] = "wws-supervisor"
  res
end
