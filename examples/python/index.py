# /python: a page from a Python worker (wws's worker API: worker(request) -> Response).
# Needs the Python runtime: wws-supervisor runtimes install python
import html


def worker(request):
    agent = html.escape(request.headers.get("user-agent", "unknown"))
    body = f"""<!doctype html>
<title>Python worker</title>
<h1>Hello from Python</h1>
<p>{request.method} {html.escape(request.url)}</p>
<p>Your client: {agent}</p>"""
    response = Response(body)
    response.headers["x-generated-by"] = "wws-supervisor"
    return response
