# Run by the runner once per worker, at load, as `python -c`: loads the
# polyfill and the worker like wws's wrapper, defines the per-request entry,
# then stops inside a clock call (the runner's snapshot point). Every request
# then calls __wws_handle on a fresh copy of that state.
import sys
import json
import time
import traceback
import types
import __main__

sys.argv = ["/src/index.py"]
sys.path[0] = "/src"
exec("from poly import *", __main__.__dict__)
try:
    with open("/src/index.py", encoding="utf-8") as __wws_file:
        __wws_code = compile(__wws_file.read(), "/src/index.py", "exec")
    del __wws_file
    exec(__wws_code, __main__.__dict__)
    del __wws_code
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    raise SystemExit(1)
if not callable(getattr(__main__, "worker", None)):
    sys.stderr.write("the script defines no worker(request) function\n")
    sys.stderr.flush()
    raise SystemExit(1)


def __wws_handle():
    try:
        # Every request starts from the same snapshot: reseed what would
        # otherwise repeat the same "random" numbers in every request.
        if "random" in sys.modules:
            sys.modules["random"].seed()
        request = Request(json.loads(sys.stdin.buffer.read()))
        response = __main__.worker(request)
        sys.stdout.write(response.to_json() + "\n")
        sys.stdout.flush()
        return True
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return None


sys.stdout.write(
    json.dumps(
        {
            "handle": id(__wws_handle),
            "no_args": id(()),
            "ok": id(True),
            "function_type": id(types.FunctionType),
        }
    )
    + "\n#wws-snapshot\n"
)
sys.stdout.flush()
time.process_time()
raise SystemExit(2)  # not reached: the runner stops us inside that call
