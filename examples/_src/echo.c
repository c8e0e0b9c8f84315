/* c/echo.wasm: answers with what it received, as JSON-ish text. */
#include "kit.h"

int main(void) {
    struct kit_request req;
    char method[16] = "", url[1024] = "", body[8192] = "", page[10240];
    if (kit_read_request(&req) != 0) return 1;
    kit_string(req.json, "method", method, sizeof method);
    kit_string(req.json, "url", url, sizeof url);
    kit_string(req.json, "body", body, sizeof body);
    snprintf(page, sizeof page, "method=%s\nurl=%s\nbody=%s\n", method, url, body);
    kit_respond(200, "text/plain; charset=utf-8", page);
    return 0;
}
