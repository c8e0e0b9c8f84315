/* The bench's trivial compiled kit worker: read the request, answer a fixed
 * page. The same .wasm runs in wws-supervisor and in the Node.js peer. */
#include "../../examples/_src/kit.h"

int main(void) {
    struct kit_request req;
    if (kit_read_request(&req) != 0) return 1;
    kit_respond(200, "text/plain; charset=utf-8", "Hello from a compiled worker");
    return 0;
}
