// A WAGI (CGI) module that prints what it was given: its arguments, its
// environment and the request body. Built by build.sh into examples/wagi/env.wasm.
#include <stdio.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    printf("Content-Type: text/plain; charset=utf-8\n\n");
    for (int i = 0; i < argc; i++) printf("arg %d: %s\n", i, argv[i]);
    for (char **env = environ; *env; env++) printf("env %s\n", *env);
    printf("body: ");
    char buffer[4096];
    ssize_t got;
    while ((got = read(0, buffer, sizeof buffer)) > 0) fwrite(buffer, 1, (size_t)got, stdout);
    printf("\n");
    return 0;
}
