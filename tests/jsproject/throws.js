addEventListener("fetch", () => {
  throw new TypeError("the secret path /etc/shadow leaked here");
});
