addEventListener("fetch", (event) => {
  const bytes = new Uint8Array([0, 1, 2, 253, 254, 255]);
  event.respondWith(new Response(bytes, { headers: { "content-type": "application/octet-stream" } }));
});
