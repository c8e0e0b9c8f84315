def worker(request):
    response = Response("not here")
    response.status_code = 404
    response.headers["x_custom_header"] = "underscores become dashes"
    return response
