addEventListener("fetch", () => {
  Cache.set("poison", "1");
  throw new Error("fails after writing");
});
