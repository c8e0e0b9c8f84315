#!/usr/bin/env bash
# wws-supervisor on arm64 (aarch64), on an x86_64 Debian machine, through QEMU
# user-mode emulation. Everything comes from package registries:
#   * Debian: qemu-user-static (host), and an arm64 CPython 3.11 with its shared
#     libraries, downloaded with a private apt state (the host's apt setup and
#     dpkg database are not touched) and unpacked with `dpkg -x` into a root;
#   * PyPI: the aarch64 wheels of our dependencies (wasmtime ships them).
# Then it serves examples/ under emulation and runs a smoke subset of the tests
# (routing, a compiled worker, a JavaScript worker, KV, limits).
#
#   bash bench/arm64/run.sh            # everything; prints a timing summary
#   ARM64_WORK=/var/tmp/x bash bench/arm64/run.sh
#
# Needs root or password-less sudo only to install qemu-user-static (once).
# No binfmt_misc registration is needed: the supervisor starts its runners
# through sys.executable, which is a small wrapper that runs qemu.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
WORK=${ARM64_WORK:-/tmp/wws-arm64}
ROOT=$WORK/root
SITE=$ROOT/usr/lib/python3/dist-packages
PY=$WORK/bin/python3
# Any x86_64 Python 3.11+ with pip, to download the aarch64 wheels.
HOST_PY=${HOST_PYTHON:-$REPO/.venv/bin/python}
SECONDS=0
stamp() { printf '[arm64 %4ds] %s\n' "$SECONDS" "$*"; }

# --- 1. qemu-user-static on the host -------------------------------------
if ! command -v qemu-aarch64-static >/dev/null; then
  if [ "$(id -u)" = 0 ]; then sudo=(); elif sudo -n true 2>/dev/null; then sudo=(sudo); else
    echo "Install QEMU first:  sudo apt-get install -y --no-install-recommends qemu-user-static" >&2
    exit 1
  fi
  stamp "installing qemu-user-static"
  "${sudo[@]}" apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
fi

# --- 2. an arm64 Python from Debian, unpacked into $ROOT ------------------
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  stamp "downloading arm64 python3.11 from Debian"
  apt_dir=$WORK/apt
  mkdir -p "$apt_dir"/{lists/partial,archives/partial,sources.list.d} "$ROOT"
  : >"$apt_dir/status"
  # The host's Debian sources (deb822 or one-line), read by a private apt.
  cp /etc/apt/sources.list.d/debian.sources "$apt_dir/sources.list.d/" 2>/dev/null || true
  [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$apt_dir/sources.list" || : >"$apt_dir/sources.list"
  apt_opts=(
    -o APT::Architecture=arm64 -o APT::Architectures::=arm64
    -o Dir::State::Lists="$apt_dir/lists" -o Dir::State::status="$apt_dir/status"
    -o Dir::Cache::Archives="$apt_dir/archives" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
    -o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts="$apt_dir/sources.list.d"
    -o Debug::NoLocking=1 -o APT::Sandbox::User=root
  )
  apt-get "${apt_opts[@]}" update -qq >/dev/null
  # An empty status file: apt resolves every dependency down to libc6.
  apt-get "${apt_opts[@]}" install -y -qq --download-only --no-install-recommends \
    python3.11-minimal libpython3.11-stdlib libsqlite3-0 libgcc-s1 ca-certificates >/dev/null
  for deb in "$apt_dir"/archives/*.deb; do dpkg -x "$deb" "$ROOT"; done
  mkdir -p "$SITE"
fi
mkdir -p "$WORK/bin"
# sys.executable is this wrapper (qemu -0 sets argv[0]), so the runners the
# supervisor spawns run under qemu too.
cat >"$PY" <<EOF
#!/bin/sh
exec qemu-aarch64-static -L "$ROOT" -0 "\$0" "$ROOT/usr/bin/python3.11" "\$@"
EOF
chmod +x "$PY"
stamp "python: $("$PY" -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])')"

# --- 3. aarch64 wheels from PyPI, and the project itself -----------------
deps=$("$HOST_PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"]))')
mapfile -t deps <<<"$deps"
# The wheels are kept between runs until the dependency list changes.
wanted=$(printf '%s\n' "${deps[@]}" | sha256sum | cut -c1-16)
if [ "$(cat "$WORK/wheels.done" 2>/dev/null)" != "$wanted" ]; then
  stamp "installing aarch64 wheels from PyPI"
  # pip evaluates dependency markers with the host's Python, not this one:
  # redis needs async-timeout before 3.11.3 (Debian 12 has 3.11.2), so it is
  # listed by hand.
  version=$("$PY" -c 'import platform; print(platform.python_version())')
  # The log is shown only on failure (pip can be noisy about mirror settings).
  if ! "$HOST_PY" -m pip install -q --disable-pip-version-check --target "$SITE" --upgrade \
    --only-binary=:all: --implementation cp --python-version "$version" --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_36_aarch64 --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform any \
    "${deps[@]}" "pytest>=8" "pytest-trio>=0.8" "async-timeout>=4.0.3" >"$WORK/pip.log" 2>&1; then
    cat "$WORK/pip.log" >&2
    exit 1
  fi
  echo "$wanted" >"$WORK/wheels.done"
fi
# The project is pure Python: its packages are copied next to their deps
# (runners start with -I, so they import them from site-packages). Copying
# leaves no build folder in the checkout.
for package in supervisor runner ipc; do
  rm -rf "${SITE:?}/$package"
  cp -r "$REPO/$package" "$SITE/"
  find "$SITE/$package" -name __pycache__ -prune -exec rm -rf {} +
done
stamp "installed: $("$PY" -c 'import wasmtime, trio, importlib.metadata as m; print("wasmtime", m.version("wasmtime"), "trio", m.version("trio"))')"
install_s=$SECONDS

# --- 4. serve examples/ ----------------------------------------------------
cache=$WORK/cache
rm -rf "$cache"
log=$WORK/serve.log
start=$SECONDS
"$PY" -m supervisor examples -p 0 -w 2 --cache-dir "$cache" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
port=""
while [ -z "$port" ]; do
  kill -0 $server 2>/dev/null || { cat "$log"; echo "the server exited" >&2; exit 1; }
  port=$(sed -n 's/.*Start serving requests at http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$log")
  [ -n "$port" ] || sleep 1
done
serve_start_s=$((SECONDS - start))
stamp "examples/ serving on :$port after ${serve_start_s}s (first start: compiles QuickJS under emulation)"
grep "Wasm memory" "$log"
fails=0
for route in /hello /users/ada /c/counter /c/files /js /js/hello/pi /js/counter /js/module /js/pixel; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$route")
  echo "  GET $route -> $code"
  [ "$code" = 200 ] || fails=$((fails + 1))
done
kill -TERM $server
wait $server || true
trap - EXIT
[ $fails = 0 ] || { echo "$fails example routes failed" >&2; exit 1; }

# --- 5. a smoke subset of the tests, under emulation ----------------------
start=$SECONDS
tests=(
  tests/test_routes.py                                                # routing (pure)
  tests/test_server.py::test_dynamic_route_params                     # routing, served
  tests/test_server.py::test_compiled_worker_status_and_headers       # a compiled worker
  tests/test_runner.py::test_serves_requests_in_order_and_exits_on_eof
  tests/test_server.py::test_failures_answer_with_their_kind_and_no_detail   # memory limit, trap
  tests/test_server.py::test_infinite_loop_is_504_while_other_routes_keep_answering  # fuel
  tests/test_kv.py                                                    # KV stores
  tests/test_javascript.py::test_basic_fetch_listener                 # a JavaScript worker
  tests/test_javascript.py::test_kv_counter_round_trips_and_failed_requests_write_nothing
  "tests/test_small_machines.py::test_without_a_limit_the_pool_has_4_gib_slots_and_no_bounds_checks"
)
set +e
"$PY" -m pytest -p no:cacheprovider -q -o faulthandler_timeout=1200 "${tests[@]}" 2>&1 | tee "$WORK/pytest.log"
status=${PIPESTATUS[0]}
set -e
tests_s=$((SECONDS - start))
stamp "summary: install ${install_s}s, examples/ ready in ${serve_start_s}s, smoke tests ${tests_s}s" \
  "($(tail -n 1 "$WORK/pytest.log" | tr -d '=' | xargs)), total ${SECONDS}s"
exit "$status"
