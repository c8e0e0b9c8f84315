/* c/fetch.wasm: outbound HTTP through wws's host import. It calls the URL in
 * the x-target request header (default: this server's /hello) with the method
 * number in x-method (0 GET, 1 POST, ...) and the request body, and answers
 * "status=<n>\n<body>" or "error=<kind> <message>". What it may call is set by
 * [features.http_requests] in fetch.toml. */
#include <stdint.h>
#include "kit.h"

__attribute__((import_module("http"), import_name("send-http-request")))
void send_http_request(int body_is_some, const char *body, int body_len, const void *headers, int headers_len,
                       int method, const void *params, int params_len, const char *uri, int uri_len, void *ret);

/* The host allocates the response in our memory through these. */
__attribute__((export_name("canonical_abi_realloc")))
void *canonical_abi_realloc(void *ptr, size_t old_size, size_t align, size_t new_size) {
    (void)old_size; (void)align;
    return realloc(ptr, new_size);
}
__attribute__((export_name("canonical_abi_free")))
void canonical_abi_free(void *ptr, size_t size, size_t align) { (void)size; (void)align; free(ptr); }

struct result {
    uint8_t is_err; uint8_t pad[3];
    uint32_t a, b, c, d, e;   /* ok: has_body, body_ptr, body_len, headers_ptr, headers_len; err: kind, msg_ptr, msg_len */
    uint16_t status; uint16_t pad2;
};

int main(void) {
    struct kit_request req;
    char target[1024] = "", method[8] = "0", body[4096] = "", page[8192];
    if (kit_read_request(&req) != 0) return 1;
    if (kit_nested_string(req.json, "headers", "x-target", target, sizeof target) != 0) {
        char url[1024] = "";
        kit_string(req.json, "url", url, sizeof url);
        char *path = strstr(url, "://");
        path = path ? strchr(path + 3, '/') : NULL;
        if (path) *path = '\0';
        snprintf(target, sizeof target, "%s/hello", url);
    }
    kit_nested_string(req.json, "headers", "x-method", method, sizeof method);
    kit_string(req.json, "body", body, sizeof body);
    struct result res;
    memset(&res, 0, sizeof res);
    send_http_request(body[0] != '\0', body, (int)strlen(body), NULL, 0, atoi(method), NULL, 0,
                      target, (int)strlen(target), &res);
    if (res.is_err) {
        snprintf(page, sizeof page, "error=%u %.*s", res.a, (int)res.c, (const char *)(uintptr_t)res.b);
        kit_respond(502, "text/plain; charset=utf-8", page);
    } else {
        snprintf(page, sizeof page, "status=%u\n%.*s", res.status, (int)res.c, (const char *)(uintptr_t)res.b);
        kit_respond(200, "text/plain; charset=utf-8", page);
    }
    return 0;
}
