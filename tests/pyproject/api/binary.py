def worker(request):
    response = Response(bytes(range(256)))
    response.headers["content-type"] = "application/octet-stream"
    return response
