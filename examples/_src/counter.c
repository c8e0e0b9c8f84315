/* c/counter.wasm: a KV counter in C. It shares the "counter" namespace (and
 * the "visits" key) with js/counter.js, so both count the same visits. */
#include "kit.h"

int main(void) {
    struct kit_request req;
    char visits[32] = "0", next[32], page[128];
    if (kit_read_request(&req) != 0) return 1;
    kit_nested_string(req.json, "kv", "visits", visits, sizeof visits);
    snprintf(next, sizeof next, "%ld", strtol(visits, NULL, 10) + 1);
    snprintf(page, sizeof page, "Counter: %s", next);
    const char *const kv[][2] = {{"visits", next}};
    kit_respond_kv(200, "text/plain; charset=utf-8", page, kv, 1);
    return 0;
}
