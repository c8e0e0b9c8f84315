// A serverless-wasm module: no WASI, the response is built through host calls
// imported from "env", and the linear memory is imported as env.memory.
// Built by build.sh into examples/serverless/handle.wasm.
#define IMPORT(name) __attribute__((import_module("env"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

IMPORT("log") void host_log(const char *text, long long length);
IMPORT("response_set_status_line") void set_status(unsigned status, const char *reason, long long length);
IMPORT("response_set_header") void set_header(const char *name, long long name_length, const char *value,
                                              long long value_length);
IMPORT("response_set_body") void set_body(const char *body, long long length);
IMPORT("db_get") long long db_get(const char *key, long long key_length, char *value, long long capacity);
IMPORT("tcp_connect") int tcp_connect(const char *address, long long length);
IMPORT("tcp_read") long long tcp_read(int fd, char *buffer, long long length);
IMPORT("tcp_write") long long tcp_write(int fd, const char *buffer, long long length);

static long long length_of(const char *text) {
    long long n = 0;
    while (text[n]) n++;
    return n;
}

static void send_text(unsigned status, const char *text, long long length) {
    set_status(status, "OK", 2);
    set_header("Content-Type", 12, "text/plain", 10);
    set_body(text, length);
}

EXPORT("hello") void hello(void) {
    static const char message[] = "Hello world from wasm!\n";
    host_log("Hello world with api!", 21);
    send_text(200, message, length_of(message));
}

static char page[4096];

// Asks the backend named by env["/env/backend"] (an allowed host:port) and
// answers with what it said.
EXPORT("backend") void backend(void) {
    char address[128];
    long long size = db_get("/env/backend", 12, address, sizeof address - 1);
    if (size < 0 || size >= (long long)sizeof address) {
        static const char missing[] = "could not get value for key /env/backend\n";
        send_text(500, missing, length_of(missing));
        return;
    }
    address[size] = 0;
    int fd = tcp_connect(address, size);
    if (fd < 0) {
        static const char refused[] = "could not connect to backend\n";
        send_text(502, refused, length_of(refused));
        return;
    }
    tcp_write(fd, "hello\n", 6);
    static const char head[] = "answer from backend:\n";
    long long used = length_of(head);
    for (long long i = 0; i < used; i++) page[i] = head[i];
    long long got = tcp_read(fd, page + used, (long long)sizeof page - used);
    if (got > 0) used += got;
    send_text(200, page, used);
}
