addEventListener("fetch", (event) => {
  event.respondWith(Response.json(Object.keys(Cache.state).sort()));
});
