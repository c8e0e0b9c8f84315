addEventListener("fetch", (event) => {
  const count = Number(Cache.get("count") || 0) + 1;
  Cache.set("count", String(count));
  event.respondWith(new Response(String(count)));
});
