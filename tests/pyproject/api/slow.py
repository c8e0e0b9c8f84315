def worker(request):
    while True:
        pass
