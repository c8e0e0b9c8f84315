// The soak's JavaScript route.
addEventListener("fetch", (event) => {
  event.respondWith(new Response("Hello from JavaScript", { headers: { "content-type": "text/plain" } }));
});
