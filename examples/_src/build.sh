#!/usr/bin/env bash
# Rebuild the compiled example workers from their C sources with the ziglang
# package from PyPI (pinned in pyproject's "build" extra), so the result is
# reproducible on any machine: `pip install -e '.[build]' && examples/_src/build.sh`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(dirname "$here")"
# A 256 KiB stack instead of the toolchain's 16 MiB default keeps the workers
# well inside small --memory-mb limits.
cc() { python -m ziglang cc --target=wasm32-wasi -O2 -s -Wl,-z,stack-size=262144 "$@"; }
cc "$here/user.c" -o "$out/users/[id].wasm"
cc "$here/echo.c" -o "$out/c/echo.wasm"
cc "$here/counter.c" -o "$out/c/counter.wasm"
cc "$here/files.c" -o "$out/c/files.wasm"
cc "$here/fetch.c" -o "$out/c/fetch.wasm"
# WAGI modules (WASI commands printing CGI responses) and a serverless-wasm
# handle module (no WASI: host calls from "env", memory imported as env.memory).
cc "$here/wagi_env.c" -o "$out/wagi/_modules/env.wasm"
cc "$here/wagi_routes.c" -o "$out/wagi/_modules/routes.wasm"
cc "$here/wagi_volume.c" -o "$out/wagi/_modules/volume.wasm"
python -m ziglang cc --target=wasm32-freestanding -O2 -s -nostdlib -Wl,--no-entry -Wl,--import-memory \
  "$here/handle.c" -o "$out/serverless/_modules/handle.wasm"
