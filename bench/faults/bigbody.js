// A JavaScript response body just over 64 MiB.
addEventListener("fetch", (event) => {
  event.respondWith(new Response("x".repeat((64 << 20) + 1)));
});
