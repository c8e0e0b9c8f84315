// The peer: what a user could run instead, and a stand-in for wws's design.
// One Node.js process, no limits: each request gets a fresh WASI instance of a
// precompiled kit worker (wws's protocol: request JSON on stdin, response JSON
// on stdout). Usage: node node-wasi-server.js PORT ROUTE=FILE.wasm ...
"use strict";
const fs = require("node:fs");
const http = require("node:http");
const { WASI } = require("node:wasi");

const [port, ...routeArgs] = process.argv.slice(2);
const routes = new Map();
for (const arg of routeArgs) {
  const [route, file] = arg.split("=");
  routes.set(route, new WebAssembly.Module(fs.readFileSync(file)));  // compiled once
}
// Request and response travel through the worker's stdin and stdout, which are
// served from memory here: fd_read(0) and fd_write(1) are intercepted, so no
// file descriptor is opened per request (node:wasi closes the descriptors it
// was given only when it is garbage-collected, which under load means leaked
// descriptors, or sockets closed by mistake when they are closed twice).
function run(module, input) {
  const wasi = new WASI({ version: "preview1", args: [], env: {}, returnOnExit: true });
  const imports = { ...wasi.wasiImport };
  let memory = null, offset = 0;
  const out = [];
  const iovecs = (iovs, count) => {
    const view = new DataView(memory.buffer), list = [];
    for (let i = 0; i < count; i++) list.push([view.getUint32(iovs + 8 * i, true), view.getUint32(iovs + 8 * i + 4, true)]);
    return list;
  };
  imports.fd_read = (fd, iovs, count, nread) => {
    if (fd !== 0) return wasi.wasiImport.fd_read(fd, iovs, count, nread);
    let total = 0;
    for (const [ptr, len] of iovecs(iovs, count)) {
      const chunk = input.subarray(offset, offset + len);
      new Uint8Array(memory.buffer, ptr, chunk.length).set(chunk);
      offset += chunk.length; total += chunk.length;
      if (chunk.length < len) break;
    }
    new DataView(memory.buffer).setUint32(nread, total, true);
    return 0;
  };
  imports.fd_write = (fd, iovs, count, nwritten) => {
    if (fd !== 1) return wasi.wasiImport.fd_write(fd, iovs, count, nwritten);
    let total = 0;
    for (const [ptr, len] of iovecs(iovs, count)) {
      out.push(Buffer.from(new Uint8Array(memory.buffer, ptr, len)));
      total += len;
    }
    new DataView(memory.buffer).setUint32(nwritten, total, true);
    return 0;
  };
  const instance = new WebAssembly.Instance(module, { wasi_snapshot_preview1: imports });
  memory = instance.exports.memory;
  wasi.start(instance);
  return JSON.parse(Buffer.concat(out).toString("utf8"));
}

http.createServer((req, res) => {
  const module = routes.get(req.url.split("?")[0]);
  if (!module) { res.writeHead(404).end(); return; }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const input = Buffer.from(JSON.stringify({
      url: `http://${req.headers.host}${req.url}`, method: req.method, headers: req.headers,
      body: Buffer.concat(chunks).toString("utf8"), kv: {}, params: {},
    }));
    try {
      const out = run(module, input);
      const body = out.base64 ? Buffer.from(out.data, "base64") : out.data;
      res.writeHead(out.status || 200, { "content-type": "text/html", ...out.headers }).end(body);
    } catch (error) {
      res.writeHead(500).end("There was an error running this function");
    }
  });
}).listen(Number(port), "127.0.0.1", function () {
  console.log(`peer listening on http://127.0.0.1:${this.address().port}`);
});
