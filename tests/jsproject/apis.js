// Exercises the standard shapes; answers a JSON report.
addEventListener("fetch", (event) => {
  const h = new Headers({ "Content-Type": "text/plain", "X-A": "1" });
  h.append("x-a", "2");
  const seen = [];
  h.forEach((v, k) => seen.push(`${k}=${v}`));
  const url = new URL("/p/../q?a=1&b=two%20words#frag", "https://Example.com:443/base/x");
  const params = new URLSearchParams("x=1&y=2&x=3");
  params.append("z", "a b");
  const bytes = new TextEncoder().encode("héllo €");
  const uuid = crypto.randomUUID();
  const random = crypto.getRandomValues(new Uint8Array(8));
  event.respondWith(Response.json({
    has: h.has("content-type"), get: h.get("X-A"), entries: [...h.entries()], keys: [...h.keys()], seen,
    forOf: (() => { const out = []; for (const [k] of h) out.push(k); return out; })(),
    href: url.href, host: url.host, pathname: url.pathname, search: url.search, hash: url.hash,
    b: url.searchParams.get("b"), origin: url.origin,
    all: params.getAll("x"), qs: params.toString(),
    encoded: [...bytes], decoded: new TextDecoder().decode(bytes),
    uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(uuid),
    randomLength: random.length,
    ok: new Response("", { status: 204 }).ok, notOk: new Response("", { status: 404 }).ok,
    statusText: new Response("", { status: 404 }).statusText,
    reqHeader: event.request.headers.get("X-Test-Header"),
  }));
});
