addEventListener("fetch", (event) => { /* forgets respondWith */ });
