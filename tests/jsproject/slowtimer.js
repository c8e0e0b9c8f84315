export default { async fetch() { await new Promise((r) => setTimeout(r, 60000)); return new Response("late"); } };
