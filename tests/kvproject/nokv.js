// No [data.kv]: gets an empty snapshot, and its writes go nowhere.
addEventListener("fetch", (event) => {
  const before = JSON.stringify(Cache.state);
  Cache.set("ignored", "1");
  event.respondWith(new Response(before));
});
