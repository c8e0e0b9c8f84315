// Output no worker should be able to turn into a dead runner; ?case= picks it.
addEventListener("fetch", (event) => {
  const params = new URL(event.request.url).searchParams;
  const lone = "\ud800";
  switch (params.get("case")) {
    case "header": event.respondWith(new Response("ok", { headers: { "x-a": lone } })); return;
    case "kv-value": Cache.set("k", lone); break;
    case "kv-key": Cache.set(lone, "v"); break;
    case "body": event.respondWith(new Response(`a${lone}b`)); return;
    case "status-text": event.respondWith(new Response("ok", { statusText: lone })); return;
    case "log": console.log(lone); break;
    case "error": throw new Error(lone);
    case "big": event.respondWith(new Response("x".repeat(Number(params.get("mb")) << 20))); return;
  }
  event.respondWith(new Response("ok"));
});
