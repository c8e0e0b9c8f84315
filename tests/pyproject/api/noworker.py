def handler(request):
    return Response("wrong name")
