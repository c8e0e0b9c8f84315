import sys


def worker(request):
    lines = [
        f"method={request.method}",
        f"url={request.url}",
        f"agent={request.headers.get('user-agent')}",
        f"body={request.body}",
        f"argv={sys.argv}",
        f"names={sorted(n for n in ('Request', 'Response', 'Cache') if n in globals())}",
    ]
    response = Response("\n".join(lines))
    response.headers["x_generated_by"] = "python"
    response.headers["content_type"] = "text/plain"
    return response
