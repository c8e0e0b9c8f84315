// /js/pixel: a binary response (a 1x1 transparent GIF) sent as real bytes.
const GIF = Uint8Array.from(atob("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"), (c) => c.charCodeAt(0));
addEventListener("fetch", (event) => {
  event.respondWith(new Response(GIF, { headers: { "content-type": "image/gif", "cache-control": "max-age=3600" } }));
});
