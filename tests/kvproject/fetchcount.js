// Read-modify-write of the "counter" namespace's count around an outbound
// call to the URL in x-target: a conflict here must not re-run the request.
addEventListener("fetch", (event) => {
  event.respondWith((async () => {
    const count = Number(Cache.get("count") || 0) + 1;
    const upstream = await fetch(event.request.headers.get("x-target"));
    Cache.set("count", String(count));
    return new Response(`${count} ${upstream.status}`);
  })());
});
