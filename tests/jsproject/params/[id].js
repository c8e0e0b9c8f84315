addEventListener("fetch", (event) => {
  const { id } = event.request.params;
  event.respondWith(new Response(`id=${id} url=${event.request.url} method=${event.request.method}`));
});
