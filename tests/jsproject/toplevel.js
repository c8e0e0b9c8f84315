// Never finishes loading: the load step must give up on it, not hang startup.
while (true) {}
addEventListener("fetch", (event) => event.respondWith(new Response("unreachable")));
