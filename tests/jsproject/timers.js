export default {
  async fetch() {
    const started = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 50));
    let ticks = 0;
    await new Promise((resolve) => { const id = setInterval(() => { if (++ticks === 3) { clearInterval(id); resolve(); } }, 5); });
    return new Response(`waited=${Date.now() - started >= 50} ticks=${ticks}`);
  },
};
