// Fetches x-target and answers its status and body, or 502 with the error:
// the target of the outbound-ceiling test. Its TOML asks for more than the
// alpha tenant allows (hosts and limits).
addEventListener("fetch", (event) => {
  event.respondWith((async () => {
    try {
      const r = await fetch(event.request.headers.get("x-target"));
      return new Response(`status=${r.status} ${await r.text()}`);
    } catch (e) {
      return new Response(e.message, { status: 502 });
    }
  })());
});
