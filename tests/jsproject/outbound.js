export default {
  async fetch() {
    try { await fetch("https://api.example.com/data"); return new Response("fetched?!"); }
    catch (e) { return new Response(e.message, { status: 502 }); }
  },
};
