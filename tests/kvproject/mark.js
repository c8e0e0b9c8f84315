// Prints x-mark: once its line is in the server's log, so is every line
// logged before its response (one ordered stderr pipe).
addEventListener("fetch", (event) => {
  console.log(`mark ${event.request.headers.get("x-mark")}`);
  event.respondWith(new Response("marked"));
});
