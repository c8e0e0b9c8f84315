function down(n) { return down(n + 1) + 1; }
addEventListener("fetch", (event) => event.respondWith(new Response(String(down(0)))));
