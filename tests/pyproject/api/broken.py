def worker(request)
    return Response("missing colon")
