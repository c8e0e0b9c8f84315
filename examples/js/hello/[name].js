// /js/hello/:name: the [name] segment arrives in request.params.
addEventListener("fetch", (event) => {
  const name = event.request.params.name;
  event.respondWith(new Response(`Hello, ${name}!`, { headers: { "content-type": "text/plain; charset=utf-8" } }));
});
