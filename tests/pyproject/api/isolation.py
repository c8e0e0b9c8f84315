import random

seen = []


def worker(request):
    seen.append(request.url)
    return Response(f"seen={len(seen)} random={random.random()}")
