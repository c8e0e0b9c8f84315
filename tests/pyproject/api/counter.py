def worker(request):
    count = int(Cache.get("count") or 0) + 1
    Cache.set("count", count)
    if "fail" in request.url:
        raise RuntimeError("this request fails after writing")
    return Response(f"count={count}")
