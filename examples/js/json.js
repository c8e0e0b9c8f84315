// /js/json: JSON in and out. MESSAGE comes from [vars] in json.toml.
addEventListener("fetch", (event) => {
  event.respondWith((async () => {
    const request = event.request;
    const body = request.method === "POST" ? await request.json() : null;
    return Response.json({ message: MESSAGE, method: request.method, youSent: body });
  })());
});
