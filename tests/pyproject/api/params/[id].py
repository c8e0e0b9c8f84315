def worker(request):
    return Response("id=" + request.params["id"])
