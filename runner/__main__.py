"""``python -m runner``: the sandboxed child the supervisor spawns (never forks).

Protocol frames travel on the original stdin/stdout. fd 1 is moved aside at
once and pointed at stderr, so a stray print from any library cannot corrupt
the frame stream.

Exit codes: 0 on EOF (the supervisor closed our stdin, or died), 3 when boot
fails, 4 when the supervisor sent something that is not a valid frame.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
from collections.abc import Callable

from ipc.codec import FrameDecoder, ProtocolError, encode
from ipc.messages import (
    PROTOCOL_VERSION,
    RUNNER_EXIT_BOOT_FAILED,
    RUNNER_EXIT_OK,
    RUNNER_EXIT_PROTOCOL_ERROR,
    Configure,
    Failure,
    FailureKind,
    Invoke,
    Message,
    Ready,
    Reply,
)
from runner.executors.kit_protocol import printable
from runner.lifeline import die_with_parent

EXIT_OK = RUNNER_EXIT_OK
EXIT_BOOT_FAILED = RUNNER_EXIT_BOOT_FAILED
EXIT_PROTOCOL_ERROR = RUNNER_EXIT_PROTOCOL_ERROR
# One read holds most requests; a bigger buffer costs an mmap/munmap per
# read (50-70 us against 2-4 us), and larger frames just take more reads.
_READ_SIZE = 1 << 16
# Bigger pipes halve the round trip for large bodies (the default is 64 KiB).
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031

log = logging.getLogger("runner")


class _Channel:
    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd, self._write_fd = read_fd, write_fd
        self._decoder = FrameDecoder()
        self._pending: list[Message] = []

    def receive(self) -> Message | None:
        """The next message, or None at end of stream."""
        while not self._pending:
            data = os.read(self._read_fd, _READ_SIZE)
            if not data:
                return None
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    def send(self, message: Message) -> None:
        self.send_frame(encode(message))

    def send_frame(self, data: bytes) -> None:
        frame = memoryview(data)
        while frame:
            written = os.write(self._write_fd, frame)
            frame = frame[written:]


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # not a pipe, or over /proc/sys/fs/pipe-max-size: the default works


def _isolate_stdio() -> tuple[int, int]:
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    for fd in (proto_in, proto_out):
        _grow_pipe(fd)
    return proto_in, proto_out


def main() -> int:
    if not die_with_parent(sys.argv[1:]):
        return EXIT_OK
    logging.basicConfig(
        level=os.environ.get("WWS_RUNNER_LOG_LEVEL", "WARNING"),
        format=f"runner[{os.getpid()}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # The supervisor owns shutdown; a terminal's Ctrl-C must not kill us first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Over-long guest output must fail the write (EFBIG), not kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    channel = _Channel(*_isolate_stdio())
    try:
        first = channel.receive()
    except ProtocolError as exc:
        log.error("invalid configure frame: %s", exc)
        return EXIT_PROTOCOL_ERROR
    if first is None:
        return EXIT_OK
    if not isinstance(first, Configure) or first.protocol_version != PROTOCOL_VERSION:
        log.error("expected Configure with protocol %d, got %r", PROTOCOL_VERSION, type(first).__name__)
        return EXIT_BOOT_FAILED
    return _serve(channel, first)


def _serve(channel: _Channel, config: Configure) -> int:
    # wasmtime is imported only now, in a process that was exec'd fresh.
    import wasmtime

    from runner.engines import http_import
    from runner.engines.engine import EngineDoesNotFit, make_engine, profile
    from runner.engines.modules import LoadError, ModuleCache, load_worker
    from runner.sandbox import Sandbox

    http_context = http_import.RequestContext()
    try:
        engine = make_engine(config.engine)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        http_import.define(linker, http_context)
        cache = ModuleCache(engine, config.cache_dir, profile(config.engine))
    except EngineDoesNotFit as exc:
        log.error("boot failed: %s", exc)
        return EXIT_BOOT_FAILED
    except Exception as exc:
        # One line: the supervisor relays it and quotes it if no runner can boot.
        log.debug("engine setup failed", exc_info=True)
        log.error(
            "boot failed: cannot set up the wasm engine: %s",
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
        )
        return EXIT_BOOT_FAILED
    workers = {}
    load_errors: dict[str, str] = {}
    for spec in config.workers:
        try:
            workers[spec.worker_id] = load_worker(
                spec, cache, linker, write=config.prepare, http=http_context
            )
        except LoadError as exc:
            load_errors[spec.worker_id] = str(exc)
    channel.send(Ready(0, PROTOCOL_VERSION, os.getpid(), load_errors))
    if config.prepare:
        return EXIT_OK
    # Cap every file this process writes (guest stdout/stderr included) so a
    # hostile worker cannot fill the disk or /dev/shm.
    resource.setrlimit(resource.RLIMIT_FSIZE, (config.max_output_bytes, config.max_output_bytes))
    sandbox = Sandbox(engine, workers, config.epoch_tick_ms, config.scratch_dir, config.max_output_bytes)
    try:
        while True:
            try:
                message = channel.receive()
            except ProtocolError as exc:
                log.error("invalid frame from the supervisor: %s", exc)
                return EXIT_PROTOCOL_ERROR
            if message is None:
                return EXIT_OK
            if not isinstance(message, Invoke):
                log.error("unexpected %s frame", type(message).__name__)
                return EXIT_PROTOCOL_ERROR
            # Writing is outside the net: a broken pipe means the supervisor is gone.
            channel.send_frame(answer(sandbox.run, message))
            sandbox.release()
    finally:
        sandbox.close()


def answer(run: Callable[[Invoke], Reply | Failure], invoke: Invoke) -> bytes:
    """The frame answering ``invoke``. Whatever goes wrong while running the
    request or framing its reply (a worker's output that slipped past the
    checks, a bug of ours) costs this request a Failure, never the runner.

    Error handling: MemoryError and non-Exception errors (SystemExit,
    KeyboardInterrupt) propagate: the process itself is then in doubt, and the
    supervisor replaces it.
    """
    try:
        result = run(invoke)
    except MemoryError:
        raise
    except Exception as exc:
        log.exception("request %d failed inside the runner", invoke.request_id)
        detail = printable(f"runner error: {exc!r}"[:500])
        result = Failure(invoke.request_id, FailureKind.INTERNAL, detail, 0, 0, b"")
    try:
        return encode(result)
    except MemoryError:
        raise
    except Exception as exc:
        # A Reply too large for a frame, or text msgpack cannot encode.
        kind = result.kind if isinstance(result, Failure) else FailureKind.BAD_OUTPUT
        detail = printable(f"the reply cannot be framed: {exc}"[:500])
        return encode(Failure(invoke.request_id, kind, detail, result.fuel_used, result.elapsed_us, b""))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: wasmtime's background threads can print
    # panics while Python finalizes (see the wasmtime-py facts file).
    os._exit(code)
