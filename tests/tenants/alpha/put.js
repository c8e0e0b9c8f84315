// Sets the key named by x-key to x-size characters in the "store" namespace:
// the target of the tenants' KV quota tests.
addEventListener("fetch", (event) => {
  const headers = event.request.headers;
  Cache.set(headers.get("x-key"), "v".repeat(Number(headers.get("x-size") || 1)));
  event.respondWith(new Response(String(Object.keys(Cache.state).length)));
});
