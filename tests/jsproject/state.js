// Globals and Math.random: nothing may carry over between requests.
let hits = 0;
addEventListener("fetch", (event) => {
  hits += 1;
  globalThis.seen = (globalThis.seen || 0) + 1;
  event.respondWith(Response.json({ hits, seen: globalThis.seen, random: Math.random() }));
});
