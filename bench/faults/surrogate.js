// Hostile output: a response header holding a lone surrogate.
addEventListener("fetch", (event) => {
  event.respondWith(new Response("ok", { headers: { "x-a": "\ud800" } }));
});
