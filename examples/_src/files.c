/* c/files.wasm: reads a file from a mounted folder ([[folders]] in files.toml
 * maps ./_data to /data). With ?op=write it tries to write there (refused
 * unless the folder is mounted writable); with ?op=escape it tries to leave the
 * mount with ".."; with ?op=fd3 it reads message.txt relative to WASI fd 3,
 * the first mount (what Zig workers use as their working directory). */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include "kit.h"

static void read_file(const char *path) {
    char content[4096], page[4200];
    FILE *file = fopen(path, "r");
    if (!file) {
        snprintf(page, sizeof page, "cannot open %s: %s", path, strerror(errno));
        kit_respond(404, "text/plain; charset=utf-8", page);
        return;
    }
    size_t n = fread(content, 1, sizeof content - 1, file);
    content[n] = '\0';
    fclose(file);
    kit_respond(200, "text/plain; charset=utf-8", content);
}

int main(void) {
    struct kit_request req;
    char url[1024] = "", page[256];
    if (kit_read_request(&req) != 0) return 1;
    kit_string(req.json, "url", url, sizeof url);
    if (strstr(url, "op=write")) {
        FILE *file = fopen("/data/written.txt", "w");
        if (!file) {
            snprintf(page, sizeof page, "write refused: %s", strerror(errno));
            kit_respond(403, "text/plain; charset=utf-8", page);
            return 0;
        }
        fputs("written by the worker\n", file);
        fclose(file);
        kit_respond(200, "text/plain; charset=utf-8", "write ok");
        return 0;
    }
    if (strstr(url, "op=fd3")) {
        char content[4096];
        int fd = openat(3, "message.txt", O_RDONLY);
        if (fd < 0) {
            snprintf(page, sizeof page, "cannot open message.txt under fd 3: %s", strerror(errno));
            kit_respond(404, "text/plain; charset=utf-8", page);
            return 0;
        }
        ssize_t n = read(fd, content, sizeof content - 1);
        close(fd);
        content[n < 0 ? 0 : n] = '\0';
        kit_respond(200, "text/plain; charset=utf-8", content);
        return 0;
    }
    if (strstr(url, "op=escape")) {
        read_file("/data/../../files.toml");
        return 0;
    }
    read_file("/data/message.txt");
    return 0;
}
