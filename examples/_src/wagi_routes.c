// A WAGI module with sub-routes: WAGI calls _routes at startup, and each line
// it prints ("<route> <export>") adds a route under the module's own, served
// by that export. Built by build.sh into examples/wagi/routes.wasm.
#include <stdio.h>

#define EXPORT(name) __attribute__((export_name(name)))

static void reply(const char *text) {
    printf("Content-Type: text/plain\n\n%s\n", text);
    fflush(stdout);  // an export is not main: nothing flushes stdout after it
}

EXPORT("_routes") void routes(void) {
    printf("/hello on_hello\n/items/... on_items\n");
    fflush(stdout);
}

EXPORT("on_hello") void on_hello(void) { reply("hello from a sub-route"); }

EXPORT("on_items") void on_items(void) { reply("items, by the wildcard sub-route"); }

int main(void) {
    reply("the module's own route");
    return 0;
}
