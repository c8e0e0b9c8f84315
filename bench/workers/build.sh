#!/usr/bin/env bash
# Rebuild the bench's compiled worker (committed, so running the bench needs no compiler).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python -m ziglang cc --target=wasm32-wasi -O2 -s -Wl,-z,stack-size=262144 "$here/hello.c" -o "$here/hello.wasm"
