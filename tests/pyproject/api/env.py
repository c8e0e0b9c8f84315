import os


def worker(request):
    names = sorted(os.environ)
    return Response(f"MESSAGE={os.getenv('MESSAGE')} FROM_HOST={os.getenv('FROM_HOST')} names={names}")
