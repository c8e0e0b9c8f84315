/*
 * A tiny C kit for the wws worker protocol: read the request JSON from stdin,
 * write the response JSON to stdout. Header-only, no dependencies beyond libc.
 *
 *   struct kit_request req; kit_read_request(&req);
 *   kit_string(req.json, "method", buf, sizeof buf);       // top-level string
 *   kit_nested_string(req.json, "params", "id", buf, n);    // one level down
 *   kit_respond(200, "text/html; charset=utf-8", body);
 *
 * The JSON scanner only understands what the protocol sends (objects, strings,
 * numbers, literals); it never allocates and never reads past the input.
 */
#ifndef WWS_KIT_H
#define WWS_KIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kit_request {
    char *json;
    size_t len;
};

static int kit_read_request(struct kit_request *req) {
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf) return -1;
    for (;;) {
        if (len + 1 >= cap) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) { free(buf); return -1; }
            buf = bigger;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len - 1, stdin);
        if (got == 0) break;
        len += got;
    }
    buf[len] = '\0';
    req->json = buf;
    req->len = len;
    return 0;
}

static const char *kit__ws(const char *p) {
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
    return p;
}

/* Skip one JSON value; returns the first byte after it, or NULL if malformed. */
static const char *kit__skip(const char *p) {
    p = kit__ws(p);
    if (*p == '"') {
        for (p++; *p && *p != '"'; p++)
            if (*p == '\\' && p[1]) p++;
        return *p == '"' ? p + 1 : NULL;
    }
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = kit__ws(p + 1);
        if (*p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                p = kit__skip(p);            /* key */
                if (!p) return NULL;
                p = kit__ws(p);
                if (*p != ':') return NULL;
                p++;
            }
            p = kit__skip(p);                /* value */
            if (!p) return NULL;
            p = kit__ws(p);
            if (*p == ',') { p++; continue; }
            return *p == close ? p + 1 : NULL;
        }
    }
    if (!*p) return NULL;
    while (*p && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n') p++;
    return p;
}

/* Copy a JSON string literal at p (unescaping \" \\ \/ \n \t) into out. */
static int kit__copy_string(const char *p, char *out, size_t cap) {
    size_t n = 0;
    if (*p != '"' || cap == 0) return -1;
    for (p++; *p && *p != '"'; p++) {
        char c = *p;
        if (c == '\\') {
            p++;
            switch (*p) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case '"': case '\\': case '/': c = *p; break;
            case 'u': c = '?'; p += 4; break;  /* non-ASCII escapes are not decoded */
            default: return -1;
            }
        }
        if (n + 1 >= cap) return -1;
        out[n++] = c;
    }
    out[n] = '\0';
    return 0;
}

/* Find `key` in the object at `obj`; returns a pointer to its value or NULL. */
static const char *kit__member(const char *obj, const char *key) {
    const char *p = kit__ws(obj);
    size_t klen = strlen(key);
    if (*p != '{') return NULL;
    p = kit__ws(p + 1);
    while (*p == '"') {
        const char *name = p + 1;
        const char *after = kit__skip(p);
        if (!after) return NULL;
        p = kit__ws(after);
        if (*p != ':') return NULL;
        const char *value = kit__ws(p + 1);
        if ((size_t)(after - name - 1) == klen && strncmp(name, key, klen) == 0) return value;
        p = kit__skip(value);
        if (!p) return NULL;
        p = kit__ws(p);
        if (*p != ',') return NULL;
        p = kit__ws(p + 1);
    }
    return NULL;
}

static int kit_string(const char *json, const char *key, char *out, size_t cap) {
    const char *v = kit__member(json, key);
    return v ? kit__copy_string(v, out, cap) : -1;
}

static int kit_nested_string(const char *json, const char *outer, const char *key, char *out, size_t cap) {
    const char *obj = kit__member(json, outer);
    return obj ? kit_string(obj, key, out, cap) : -1;
}

static void kit__write_escaped(const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { putchar('\\'); putchar(c); }
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
}

static void kit_respond(int status, const char *content_type, const char *body) {
    fputs("{\"data\":\"", stdout);
    kit__write_escaped(body);
    printf("\",\"status\":%d,\"headers\":{\"content-type\":\"", status);
    kit__write_escaped(content_type);
    fputs("\"},\"kv\":{},\"base64\":false}", stdout);
    fflush(stdout);
}

/* Like kit_respond, and also writes the worker's KV namespace back:
 * kv is an array of npairs {key, value} pairs (the whole namespace as the
 * worker wants it; keys it leaves out are deleted). */
static void kit_respond_kv(int status, const char *content_type, const char *body,
                           const char *const kv[][2], size_t npairs) {
    fputs("{\"data\":\"", stdout);
    kit__write_escaped(body);
    printf("\",\"status\":%d,\"headers\":{\"content-type\":\"", status);
    kit__write_escaped(content_type);
    fputs("\"},\"kv\":{", stdout);
    for (size_t i = 0; i < npairs; i++) {
        fputs(i ? ",\"" : "\"", stdout);
        kit__write_escaped(kv[i][0]);
        fputs("\":\"", stdout);
        kit__write_escaped(kv[i][1]);
        putchar('"');
    }
    fputs("},\"base64\":false}", stdout);
    fflush(stdout);
}

/* HTML-escape src into dst (for echoing user input into a page). */
static void kit_html_escape(const char *src, char *dst, size_t cap) {
    size_t n = 0;
    for (; *src && n + 7 < cap; src++) {
        const char *rep = NULL;
        switch (*src) {
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '&': rep = "&amp;"; break;
        case '"': rep = "&quot;"; break;
        }
        if (rep) { size_t l = strlen(rep); memcpy(dst + n, rep, l); n += l; }
        else dst[n++] = *src;
    }
    dst[n] = '\0';
}

#endif
