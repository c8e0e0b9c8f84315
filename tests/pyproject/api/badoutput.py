def worker(request):
    print("this is not JSON")
    return Response("never sent")
