// The wws JavaScript worker API, evaluated into QuickJS once per worker before
// the snapshot is taken. Everything here is the worker's global environment:
// addEventListener("fetch"), Request, Response, Headers, Cache, fetch, console,
// URL, URLSearchParams, TextEncoder/TextDecoder, crypto, timers.
//
// The runner drives a request with three calls: __wws_start(json) builds the
// Request and calls the handler; after promise jobs run, __wws_poll() returns
// the response JSON once the handler settled, or the milliseconds until the
// next timer. Nothing from one request survives to the next: every request
// starts from the same snapshot.
"use strict";
(function () {
  const G = globalThis;
  // Host objects from the qjs launcher that workers must not rely on.
  for (const name of ["std", "os", "print", "gc", "scriptArgs", "bjson"]) {
    try { delete G[name]; } catch (_) { /* not configurable */ }
  }

  // ---- randomness: reseeded per request by the host (the snapshot would
  // otherwise give every request the same Math.random sequence).
  let s0 = 1, s1 = 2, s2 = 3, s3 = 4;
  function seed(hex) {
    const words = [];
    for (let i = 0; i < 4; i++) words.push(parseInt(hex.slice(i * 8, i * 8 + 8), 16) >>> 0);
    [s0, s1, s2, s3] = words;
    if ((s0 | s1 | s2 | s3) === 0) s0 = 1;
  }
  function next32() {  // xoshiro128**
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t; s3 = rotl(s3, 11);
    return result;
  }
  function rotl(x, k) { return (x << k) | (x >>> (32 - k)); }
  Math.random = function random() { return (next32() * 2 ** 21 + (next32() >>> 11)) / 2 ** 53; };

  // ---- text encoding (UTF-8 only, like the web platform's default)
  class TextEncoder {
    get encoding() { return "utf-8"; }
    encode(input = "") {
      const s = String(input), out = [];
      for (let i = 0; i < s.length; i++) {
        let c = s.charCodeAt(i);
        if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
          const d = s.charCodeAt(i + 1);
          if (d >= 0xdc00 && d < 0xe000) { c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00); i++; }
          else c = 0xfffd;
        } else if (c >= 0xd800 && c < 0xe000) c = 0xfffd;
        if (c < 0x80) out.push(c);
        else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
        else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
        else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
      }
      return new Uint8Array(out);
    }
  }
  class TextDecoder {
    constructor(label = "utf-8") {
      if (!/^utf-?8$/i.test(String(label))) throw new RangeError(`TextDecoder: unsupported encoding ${label}`);
    }
    get encoding() { return "utf-8"; }
    decode(input) {
      if (input === undefined) return "";
      const b = toBytes(input);
      let out = "", i = 0;
      const parts = [];
      while (i < b.length) {
        let c = b[i++], cp = 0xfffd;
        if (c < 0x80) cp = c;
        else if (c >= 0xc2 && c < 0xe0 && i < b.length && (b[i] & 0xc0) === 0x80) cp = ((c & 31) << 6) | (b[i++] & 63);
        else if (c >= 0xe0 && c < 0xf0 && i + 1 < b.length && (b[i] & 0xc0) === 0x80 && (b[i + 1] & 0xc0) === 0x80) {
          cp = ((c & 15) << 12) | ((b[i] & 63) << 6) | (b[i + 1] & 63); i += 2;
          if (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000)) cp = 0xfffd;
        } else if (c >= 0xf0 && c < 0xf5 && i + 2 < b.length && (b[i] & 0xc0) === 0x80 && (b[i + 1] & 0xc0) === 0x80 && (b[i + 2] & 0xc0) === 0x80) {
          cp = ((c & 7) << 18) | ((b[i] & 63) << 12) | ((b[i + 1] & 63) << 6) | (b[i + 2] & 63); i += 3;
          if (cp < 0x10000 || cp > 0x10ffff) cp = 0xfffd;
        }
        parts.push(cp);
        if (parts.length >= 4096) { out += String.fromCodePoint(...parts); parts.length = 0; }
      }
      return out + String.fromCodePoint(...parts);
    }
  }
  function toBytes(input) {
    if (input instanceof Uint8Array) return input;
    if (input instanceof ArrayBuffer) return new Uint8Array(input);
    if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    throw new TypeError("expected an ArrayBuffer or a typed array");
  }
  const encoder = new TextEncoder(), decoder = new TextDecoder();
  function bytesToBase64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 8192) binary += String.fromCharCode(...bytes.subarray(i, i + 8192));
    return btoa(binary);
  }

  // ---- URLSearchParams and URL (the parts workers use)
  const decodeForm = (s) => { try { return decodeURIComponent(s.replace(/\+/g, " ")); } catch (_) { return s; } };
  const encodeForm = (s) => encodeURIComponent(s).replace(/%20/g, "+").replace(/[!'()~]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
  class URLSearchParams {
    #list = [];
    #url = null;
    constructor(init = "") {
      if (typeof init === "string") this.#parse(init);
      else if (init instanceof URLSearchParams) this.#list = [...init];
      else if (init && typeof init[Symbol.iterator] === "function") for (const [k, v] of init) this.#list.push([String(k), String(v)]);
      else if (init && typeof init === "object") for (const k of Object.keys(init)) this.#list.push([k, String(init[k])]);
    }
    #parse(s) {
      this.#list = [];
      for (const part of s.replace(/^\?/, "").split("&")) {
        if (!part) continue;
        const eq = part.indexOf("=");
        this.#list.push(eq < 0 ? [decodeForm(part), ""] : [decodeForm(part.slice(0, eq)), decodeForm(part.slice(eq + 1))]);
      }
    }
    static _attach(params, url) { params.#url = url; return params; }
    static _reparse(params, s) { params.#parse(s); }
    #changed() { if (this.#url) this.#url._setSearch(this.toString()); }
    append(k, v) { this.#list.push([String(k), String(v)]); this.#changed(); }
    delete(k) { this.#list = this.#list.filter(([n]) => n !== String(k)); this.#changed(); }
    get(k) { const e = this.#list.find(([n]) => n === String(k)); return e ? e[1] : null; }
    getAll(k) { return this.#list.filter(([n]) => n === String(k)).map(([, v]) => v); }
    has(k) { return this.#list.some(([n]) => n === String(k)); }
    set(k, v) {
      k = String(k); v = String(v);
      const i = this.#list.findIndex(([n]) => n === k);
      if (i < 0) this.#list.push([k, v]);
      else { this.#list[i] = [k, v]; this.#list = this.#list.filter(([n], j) => n !== k || j === i); }
      this.#changed();
    }
    sort() { this.#list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)); this.#changed(); }
    forEach(fn, self) { for (const [k, v] of this.#list) fn.call(self, v, k, this); }
    keys() { return this.#list.map(([k]) => k)[Symbol.iterator](); }
    values() { return this.#list.map(([, v]) => v)[Symbol.iterator](); }
    entries() { return this.#list.map((e) => [...e])[Symbol.iterator](); }
    [Symbol.iterator]() { return this.entries(); }
    get size() { return this.#list.length; }
    toString() { return this.#list.map(([k, v]) => encodeForm(k) + "=" + encodeForm(v)).join("&"); }
  }

  const DEFAULT_PORTS = { "http:": "80", "https:": "443", "ws:": "80", "wss:": "443", "ftp:": "21" };
  const URL_RE = /^([a-zA-Z][a-zA-Z0-9+.-]*:)(?:\/\/(?:([^:@\/?#]*)(?::([^@\/?#]*))?@)?(\[[^\]]*\]|[^:\/?#]*)(?::(\d*))?)?([^?#]*)(\?[^#]*)?(#.*)?$/;
  function normalizePath(path) {
    const out = [];
    for (const seg of path.split("/").slice(1)) {
      if (seg === "..") out.pop();
      else if (seg !== ".") out.push(seg);
    }
    const last = path.split("/").pop();
    if (last === "." || last === "..") out.push("");
    return "/" + out.join("/");
  }
  class URL {
    #p;
    #search;
    constructor(input, base) {
      input = String(input).trim();
      let m = URL_RE.exec(input);
      if (!m) {
        if (base === undefined) throw new TypeError(`Invalid URL: ${input}`);
        const b = base instanceof URL ? base : new URL(base);
        let path, search, hash;
        const h = input.indexOf("#"), beforeHash = h < 0 ? input : input.slice(0, h);
        hash = h < 0 ? "" : input.slice(h);
        const q = beforeHash.indexOf("?");
        const rel = q < 0 ? beforeHash : beforeHash.slice(0, q);
        search = q < 0 ? (rel === "" ? b.search : "") : beforeHash.slice(q);
        if (input.startsWith("//")) return new URL(b.protocol + input);
        if (rel.startsWith("/")) path = rel;
        else if (rel === "") path = b.pathname;
        else path = b.pathname.replace(/[^\/]*$/, "") + rel;
        m = URL_RE.exec(`${b.protocol}//${b.host}${normalizePath(path)}${search}${hash}`);
      }
      const [, protocol, username = "", password = "", hostname = "", port = "", path = "", search = "", hash = ""] = m;
      const special = protocol.toLowerCase() in DEFAULT_PORTS;
      if (special && !hostname) throw new TypeError(`Invalid URL: ${input}`);
      this.#p = {
        protocol: protocol.toLowerCase(), username, password, hostname: hostname.toLowerCase(),
        port: port === DEFAULT_PORTS[protocol.toLowerCase()] ? "" : port,
        pathname: special ? normalizePath(path || "/") : path, hash: hash === "#" ? "" : hash,
      };
      this._setSearch(search === "?" ? "" : search.replace(/^\?/, ""));
      this.#search = URLSearchParams._attach(new URLSearchParams(this.#p.search), this);
    }
    _setSearch(s) { this.#p.search = s ? "?" + s : ""; }
    get protocol() { return this.#p.protocol; }
    get username() { return this.#p.username; }
    get password() { return this.#p.password; }
    get hostname() { return this.#p.hostname; }
    set hostname(v) { this.#p.hostname = String(v).toLowerCase(); }
    get port() { return this.#p.port; }
    set port(v) { this.#p.port = String(v); }
    get host() { return this.#p.hostname + (this.#p.port ? ":" + this.#p.port : ""); }
    get origin() { return `${this.#p.protocol}//${this.host}`; }
    get pathname() { return this.#p.pathname; }
    set pathname(v) { v = String(v); this.#p.pathname = normalizePath(v.startsWith("/") ? v : "/" + v); }
    get search() { return this.#p.search; }
    set search(v) { this._setSearch(String(v).replace(/^\?/, "")); URLSearchParams._reparse(this.#search, this.#p.search); }
    get searchParams() { return this.#search; }
    get hash() { return this.#p.hash; }
    set hash(v) { v = String(v); this.#p.hash = v && !v.startsWith("#") ? "#" + v : v; }
    get href() {
      const auth = this.#p.username ? this.#p.username + (this.#p.password ? ":" + this.#p.password : "") + "@" : "";
      return `${this.#p.protocol}//${auth}${this.host}${this.#p.pathname}${this.#p.search}${this.#p.hash}`;
    }
    toString() { return this.href; }
    toJSON() { return this.href; }
    static canParse(u, b) { try { new URL(u, b); return true; } catch (_) { return false; } }
  }

  // ---- Headers: case-insensitive, iterable, insertion-ordered
  class Headers {
    #map = new Map();
    constructor(init) {
      if (init instanceof Headers) for (const [k, v] of init) this.append(k, v);
      else if (Array.isArray(init)) for (const [k, v] of init) this.append(k, v);
      else if (init && typeof init === "object") {
        for (const k of Object.keys(init)) if (init[k] !== undefined && typeof init[k] !== "object" && typeof init[k] !== "function") this.append(k, init[k]);
      }
    }
    append(k, v) {
      const key = String(k).toLowerCase(), val = String(v);
      const old = this.#map.get(key);
      this.#map.set(key, old === undefined ? val : `${old}, ${val}`);
      return val;
    }
    set(k, v) { const val = String(v); this.#map.set(String(k).toLowerCase(), val); return val; }
    get(k) { const v = this.#map.get(String(k).toLowerCase()); return v === undefined ? null : v; }
    has(k) { return this.#map.has(String(k).toLowerCase()); }
    delete(k) { return this.#map.delete(String(k).toLowerCase()); }
    forEach(fn, self) { for (const [k, v] of this) fn.call(self, v, k, this); }
    keys() { return [...this.#map.keys()].sort()[Symbol.iterator](); }
    values() { return [...this].map(([, v]) => v)[Symbol.iterator](); }
    entries() { return [...this.#map.keys()].sort().map((k) => [k, this.#map.get(k)])[Symbol.iterator](); }
    [Symbol.iterator]() { return this.entries(); }
    getSetCookie() { const v = this.#map.get("set-cookie"); return v === undefined ? [] : [v]; }
    toJSON() { return Object.fromEntries(this.#map); }
    // wws's Headers keeps a plain object in .headers; keep that readable.
    get headers() { return this.toJSON(); }
  }

  // ---- bodies: strings stay strings, binary stays bytes
  function bodyFrom(body) {
    if (body === undefined || body === null) return "";
    if (typeof body === "string") return body;
    if (body instanceof String) return body.valueOf();
    if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) return new Uint8Array(toBytes(body));
    if (body instanceof URLSearchParams) return body.toString();
    return String(body);
  }
  const bodyText = (b) => (typeof b === "string" ? b : decoder.decode(b));
  const bodyBytes = (b) => (typeof b === "string" ? encoder.encode(b) : b);
  // wws returns text() synchronously; the web platform returns a promise.
  // A String that is also a thenable serves both: `res.text() + "x"` and
  // `await res.text()` / `.then(...)` all work.
  function textResult(s) {
    const boxed = new String(s);
    Object.defineProperty(boxed, "then", { value: (ok, fail) => Promise.resolve(s).then(ok, fail) });
    return boxed;
  }
  function bufferResult(bytes) {
    const view = new Uint8Array(bytes);
    const buffer = view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength);
    Object.defineProperty(view, "then", { value: (ok, fail) => Promise.resolve(buffer).then(ok, fail) });
    return view;
  }

  const STATUS_TEXT = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    206: "Partial Content", 301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 410: "Gone", 413: "Payload Too Large",
    415: "Unsupported Media Type", 418: "I'm a teapot", 422: "Unprocessable Entity", 429: "Too Many Requests",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
  };

  class Request {
    #body;
    constructor(input, init = {}) {
      if (input instanceof Request) {
        init = { method: input.method, headers: input.headers, body: input.#body, params: input.params, ...init };
        input = input.url;
      }
      this.url = String(input);
      this.method = String(init.method || "GET").toUpperCase();
      this.headers = new Headers(init.headers);
      this.params = init.params || {};
      this.#body = bodyFrom(init.body);
    }
    get body() { return bodyText(this.#body); }
    text() { return textResult(bodyText(this.#body)); }
    json() { return Promise.resolve().then(() => JSON.parse(bodyText(this.#body))); }
    arrayBuffer() { return bufferResult(bodyBytes(this.#body)); }
    clone() { return new Request(this); }
  }

  class Response {
    #body;
    constructor(body, init = {}) {
      this.#body = bodyFrom(body);
      this.status = Number(init.status) || 200;
      this.statusText = init.statusText !== undefined ? String(init.statusText) : STATUS_TEXT[this.status] || "";
      this.headers = new Headers(init.headers);
    }
    get body() { return this.#body; }
    get ok() { return this.status >= 200 && this.status < 300; }
    text() { return textResult(bodyText(this.#body)); }
    json() { return Promise.resolve().then(() => JSON.parse(bodyText(this.#body))); }
    arrayBuffer() { return bufferResult(bodyBytes(this.#body)); }
    clone() { return new Response(this.#body, this); }
    toString() { return bodyText(this.#body); }
    defaultEncoding() { return "utf-8"; }
    static redirect(url, status = 307) {
      return new Response(`Redirecting to ${url}`, { status, headers: { Location: String(url) } });
    }
    static json(data, init = {}) {
      const headers = new Headers(init.headers);
      if (!headers.has("content-type")) headers.set("content-type", "application/json");
      return new Response(JSON.stringify(data), { ...init, headers });
    }
    static _serialize(r) {
      const bytes = typeof r.#body !== "string";
      const headers = r.headers instanceof Headers ? r.headers.toJSON() : new Headers(r.headers).toJSON();
      return { data: bytes ? bytesToBase64(r.#body) : r.#body, base64: bytes, status: r.status, headers };
    }
  }

  // ---- KV: wws's Cache over the namespace snapshot sent with the request
  let kvState = {}, kvChanged = new Set(), kvDeleted = new Set();
  const Cache = {
    get(key) { return kvState[key]; },
    set(key, value) { key = String(key); kvState[key] = String(value); kvChanged.add(key); kvDeleted.delete(key); },
    delete(key) { key = String(key); delete kvState[key]; kvDeleted.add(key); kvChanged.delete(key); },
    init(state) { kvState = { ...(state || {}) }; kvChanged = new Set(); kvDeleted = new Set(); },
    get state() { return kvState; },
  };

  // ---- console: collected and handed to the supervisor log with the response
  let logs = [];
  function format(args) {
    return args.map((a) => {
      if (typeof a === "string") return a;
      if (a instanceof Error) return `${a.name}: ${a.message}`;
      try { const j = JSON.stringify(a); return j === undefined ? String(a) : j; } catch (_) { return String(a); }
    }).join(" ");
  }
  const console = {};
  for (const level of ["log", "info", "debug", "warn", "error", "trace"]) {
    console[level] = (...args) => { if (logs.length < 200) logs.push([level, format(args).slice(0, 4096)]); };
  }

  // ---- timers, driven by the host between promise jobs
  let timers = new Map(), nextTimer = 1;
  function setTimeout(fn, ms = 0, ...args) {
    const id = nextTimer++;
    timers.set(id, { at: Date.now() + Math.max(0, Number(ms) || 0), fn, args, every: null });
    return id;
  }
  function setInterval(fn, ms = 0, ...args) {
    const id = setTimeout(fn, ms, ...args);
    timers.get(id).every = Math.max(1, Number(ms) || 0);
    return id;
  }
  const clearTimeout = (id) => { timers.delete(id); };

  // ---- crypto: random values from the per-request seed
  const crypto = {
    getRandomValues(array) {
      const bytes = toBytes(array);
      if (bytes.length > 65536) throw new RangeError("getRandomValues: at most 65536 bytes");
      for (let i = 0; i < bytes.length; i += 4) {
        const r = next32();
        for (let j = 0; j < 4 && i + j < bytes.length; j++) bytes[i + j] = (r >>> (8 * j)) & 255;
      }
      return array;
    },
    randomUUID() {
      const b = crypto.getRandomValues(new Uint8Array(16));
      b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
      const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
      return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
    },
  };

  // ---- outbound HTTP: queued here, made by the runner (which enforces the
  // worker's [features.http_requests] policy), delivered back as a Response.
  let outbound = [], pendingFetches = new Map(), nextFetch = 1;
  function fetch(resource, init = {}) {
    return new Promise((resolve, reject) => {
      let request;
      try {
        request = resource instanceof Request && Object.keys(init).length === 0 ? resource : new Request(resource instanceof Request ? resource.url : String(resource), init);
        new URL(request.url);
      } catch (e) {
        reject(new Error(`[Invalid Request] ${e.message}`));
        return;
      }
      const id = nextFetch++;
      pendingFetches.set(id, { resolve, reject });
      outbound.push({
        id, method: request.method, url: request.url, headers: [...request.headers],
        body: bytesToBase64(bodyBytes(bodyFrom(request.body))), hasBody: request.body !== "",
      });
    });
  }
  G.__wws_deliver = (json) => {
    for (const result of JSON.parse(json)) {
      const pending = pendingFetches.get(result.id);
      pendingFetches.delete(result.id);
      if (!pending) continue;
      if (result.error) pending.reject(new Error(result.error));
      else {
        const bytes = Uint8Array.from(atob(result.body), (c) => c.charCodeAt(0));
        pending.resolve(new Response(bytes, { status: result.status, headers: result.headers }));
      }
    }
  };

  // ---- the fetch event and the module entry point
  let listener = null, moduleHandler = null, env = {};
  function addEventListener(type, handler) { if (type === "fetch") listener = handler; }

  Object.assign(G, {
    TextEncoder, TextDecoder, URL, URLSearchParams, Headers, Request, Response, Cache, console, crypto, fetch,
    setTimeout, setInterval, clearTimeout, clearInterval: clearTimeout, addEventListener, self: G,
  });

  let outcome = null;
  function finish(response) {
    if (outcome) return;
    if (!(response instanceof Response)) {
      if (response && typeof response === "object" && "body" in response) response = new Response(response.body, response);
      else { fail(new TypeError("the handler must respond with a Response")); return; }
    }
    outcome = { ...Response._serialize(response), kv: kvState, kv_set: [...kvChanged], kv_deleted: [...kvDeleted], logs };
  }
  function fail(error) {
    if (outcome) return;
    const message = error instanceof Error ? `${error.name}: ${error.message}` : `Uncaught ${format([error])}`;
    outcome = { error: message, stack: (error && error.stack) || "", logs };
  }

  G.__wws_setup = (varsJson, filename) => {
    env = JSON.parse(varsJson);
    // wws makes [vars] global constants; globals are the closest for modules too.
    for (const name of Object.keys(env)) G[name] = env[name];
  };
  G.__wws_import = (filename) => {
    import(filename).then(
      (m) => { moduleHandler = m.default; },
      (e) => { G.__wws_load_error = e; },
    );
  };
  G.__wws_check_loaded = () => {
    if (G.__wws_load_error) throw G.__wws_load_error;
    if (moduleHandler !== null && typeof moduleHandler.fetch !== "function") {
      throw new TypeError("the module's default export has no fetch(request) method");
    }
    if (moduleHandler === null && listener === null) {
      throw new TypeError('the script registers no handler: call addEventListener("fetch", ...) or export default { fetch }');
    }
    delete G.__wws_load_error;
  };
  G.__wws_start = (json) => {
    const input = JSON.parse(json);
    seed(input.seed);
    Cache.init(input.kv);
    const request = new Request(input.url, { method: input.method, headers: input.headers, body: input.body, params: input.params });
    try {
      let result;
      if (moduleHandler) {
        result = moduleHandler.fetch(request, env, { waitUntil() {}, passThroughOnException() {} });
      } else {
        let responded = false;
        const event = {
          type: "fetch", request, respondWith(r) { responded = true; result = r; }, waitUntil() {},
          passThroughOnException() {},
        };
        listener.call(G, event);
        if (!responded) throw new Error("the fetch handler did not call event.respondWith()");
      }
      // A plain Response settles now: answer from this call and save the
      // host a round of promise jobs and a poll.
      if (result instanceof Response) finish(result);
      else Promise.resolve(result).then(finish, fail);
    } catch (e) {
      fail(e);
    }
    return outcome ? JSON.stringify(outcome) : 0;
  };
  G.__wws_poll = () => {
    for (;;) {
      if (outcome) return JSON.stringify(outcome);
      // "F" + JSON: requests for the runner to make, then __wws_deliver.
      if (outbound.length) return "F" + JSON.stringify(outbound.splice(0));
      if (timers.size === 0) {
        fail(new Error("the handler's promise never settled (nothing left to wait for)"));
        continue;
      }
      let soonest = null;
      for (const [id, t] of timers) if (soonest === null || t.at < timers.get(soonest).at) soonest = id;
      const timer = timers.get(soonest), wait = timer.at - Date.now();
      if (wait > 0) return Math.ceil(wait);
      if (timer.every === null) timers.delete(soonest);
      else timer.at += timer.every;
      try { timer.fn(...timer.args); } catch (e) { fail(e); }
      return 0;  // let the host run the promise jobs this timer queued
    }
  };
})();
