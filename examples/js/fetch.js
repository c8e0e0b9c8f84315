// /js/fetch: outbound HTTP with fetch(). It calls this same server's /hello
// worker; fetch.toml allows that host (and plain http) and nothing else.
addEventListener("fetch", (event) => {
  event.respondWith((async () => {
    const target = new URL("/hello", event.request.url);
    try {
      const upstream = await fetch(target);
      const text = await upstream.text();
      return new Response(`Fetched ${target.pathname}: ${upstream.status}, ${text.length} bytes`);
    } catch (error) {
      return new Response(`fetch failed: ${error.message}`, { status: 502 });
    }
  })());
});
