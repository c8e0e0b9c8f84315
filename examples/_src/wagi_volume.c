// A WAGI module that reads a file from a volume (modules.toml maps the
// module's guest folder /data to a host folder). Built by build.sh into
// examples/wagi/volume.wasm.
#include <stdio.h>

int main(void) {
    FILE *file = fopen("/data/message.txt", "r");
    if (!file) {
        printf("Status: 404 Not Found\nContent-Type: text/plain\n\nno /data/message.txt\n");
        return 0;
    }
    printf("Content-Type: text/plain\n\n");
    char buffer[4096];
    size_t got;
    while ((got = fread(buffer, 1, sizeof buffer, file)) > 0) fwrite(buffer, 1, got, stdout);
    fclose(file);
    return 0;
}
