addEventListener("fetch", (event) => {
  Cache.set("huge", "x".repeat(2 << 20));
  event.respondWith(new Response("wrote"));
});
