def worker(request):
    with open("/data/message.txt") as f:
        text = f.read().strip()
    try:
        with open("/data/new.txt", "w") as f:
            f.write("x")
        wrote = "written"
    except OSError as exc:
        wrote = type(exc).__name__
    with open("/src/index.py") as f:
        src = "def worker" in f.read()
    return Response(f"read={text} write={wrote} src={src}")
