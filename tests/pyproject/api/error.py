def helper():
    raise ValueError("secret detail 42")


def worker(request):
    helper()
