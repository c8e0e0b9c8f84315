// /js/redirect: sends the browser to the examples' home page.
addEventListener("fetch", (event) => {
  event.respondWith(Response.redirect("/", 302));
});
