addEventListener("fetch", (event) => {
  const hog = [];
  for (;;) hog.push(new ArrayBuffer(4 << 20));
});
