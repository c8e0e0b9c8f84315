// Vars from json.toml become globals; request.json() and Response.json().
addEventListener("fetch", (event) => {
  event.respondWith((async () => {
    const input = event.request.method === "POST" ? await event.request.json() : null;
    return Response.json({ message: MESSAGE, got: input, text: event.request.text() + "" }, { status: 201 });
  })());
});
