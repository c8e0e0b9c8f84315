addEventListener("fetch", (event) => {
  console.log("hello from the console", { n: 1 });
  console.error("an error line");
  event.respondWith(new Response("logged"));
});
