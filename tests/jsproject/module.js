// An ES-module worker with an async handler.
export default {
  async fetch(request, env) {
    await Promise.resolve();
    return new Response(`module ok, ${request.method} ${new URL(request.url).pathname}`);
  },
};
