addEventListener("fetch", (event) => {
  event.respondWith(Response.redirect("https://example.com/elsewhere", 302));
});
