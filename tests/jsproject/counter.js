// KV through wws's Cache API: each request adds one.
addEventListener("fetch", (event) => {
  const count = Number(Cache.get("count") || 0) + 1;
  Cache.set("count", count);
  if (new URL(event.request.url).searchParams.has("fail")) throw new Error("failing after the write");
  event.respondWith(new Response(`count=${count}`));
});
