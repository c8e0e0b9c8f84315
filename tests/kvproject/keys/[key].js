// Sets one key of the shared namespace; concurrent requests touch different keys.
addEventListener("fetch", (event) => {
  Cache.set(event.request.params.key, "1");
  event.respondWith(new Response("ok"));
});
