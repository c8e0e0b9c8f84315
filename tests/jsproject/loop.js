addEventListener("fetch", (event) => { for (;;) {} });
