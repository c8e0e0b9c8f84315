// /js/counter: state lives in the KV namespace from counter.toml, not in the
// script (every request starts from a clean copy of it).
addEventListener("fetch", (event) => {
  const count = Number(Cache.get("visits") || 0) + 1;
  Cache.set("visits", String(count));
  event.respondWith(new Response(`Counter: ${count}`, { headers: { "content-type": "text/plain" } }));
});
