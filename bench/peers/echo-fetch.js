// The JavaScript handler both servers run for the `wasmtime serve` comparison:
// an async fetch handler that reads the body and answers method, path and body.
// Our server runs it as a JS worker; `wasmtime serve` runs it as a wasi:http
// component built by componentize-js (bench/peers/componentize.mjs). A path
// ending in /loop never answers: the noisy neighbour, stopped by fuel.
addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const path = new URL(request.url).pathname;
  if (path.endsWith("/loop")) {
    for (;;) {}
  }
  const body = await request.text();
  return new Response(`${request.method} ${path} ${body}`, {
    headers: { "content-type": "text/plain" },
  });
}
