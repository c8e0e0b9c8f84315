// The soak's KV route: each request adds one to a counter.
addEventListener("fetch", (event) => {
  const count = Number(Cache.get("count") || 0) + 1;
  Cache.set("count", count);
  event.respondWith(new Response(`count=${count}`));
});
