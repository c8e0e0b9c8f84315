// Request bodies read the wws way (sync) and the standard way (awaited).
export default {
  async fetch(request) {
    const syncText = request.text() + "";
    const awaited = await request.text();
    const buffer = await request.arrayBuffer();
    const copy = new Request(request);
    const headers = new Headers(request.headers);
    return Response.json({
      syncText, awaited, bytes: buffer.byteLength, isBuffer: buffer instanceof ArrayBuffer,
      cloned: await copy.text(), type: headers.get("content-type"), body: request.body,
    });
  },
};
