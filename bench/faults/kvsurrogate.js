// Hostile output: a KV value holding a lone surrogate.
addEventListener("fetch", (event) => {
  Cache.set("k", "\ud800");
  event.respondWith(new Response("ok"));
});
