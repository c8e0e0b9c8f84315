"""One log stream (stdout), as text or one JSON object per line.

Under systemd, journald takes stdout: no emoji and no colour there. The
startup lines (routes, "Start serving ...") are written for people at a
terminal; when stdout is not one they lose their emoji, and with
``--log-format json`` they become log records like every other line, so the
stream parses line by line.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import unicodedata
from typing import TextIO

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ERROR_MARK = "❌"


def plain(line: str) -> str:
    """``line`` without its leading emoji; an error mark becomes ``error:``."""
    text = line.lstrip(" ")
    indent = line[: len(line) - len(text)]
    if text.startswith(_ERROR_MARK):
        return indent + "error: " + text[len(_ERROR_MARK) :].lstrip()
    start = 0
    # Pictographs are "other symbols"; variation selectors and joiners ride along.
    while start < len(text) and unicodedata.category(text[start]) in ("So", "Mn", "Cf"):
        start += 1
    return indent + text[start:].lstrip() if start else line


def error_line(message: str, stream: TextIO) -> str:
    """How a startup error reads on ``stream``: marked for a person at a terminal."""
    return f"{_ERROR_MARK} {message}" if stream.isatty() else f"error: {message}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, log_format: str, prefix: str = "", stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stdout) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stdout)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT.replace("%(name)s", f"{prefix}%(name)s")))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class _LinesToLog(io.TextIOBase):
    """A text stream whose lines become INFO records of one logger."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                self._logger.info("%s", plain(line.strip()))
        return len(text)


class _Plain(io.TextIOBase):
    """Passes lines through without their leading emoji."""

    def __init__(self, target: TextIO) -> None:
        self._target = target

    def write(self, text: str) -> int:
        self._target.write("\n".join(plain(line) for line in text.split("\n")))
        return len(text)

    def flush(self) -> None:
        self._target.flush()


def startup_output(log_format: str, stream: TextIO | None = None) -> TextIO:
    """Where the startup lines go: as they are on a terminal, without emoji
    elsewhere, as log records with ``--log-format json``."""
    target = stream or sys.stdout
    if log_format == "json":
        return _LinesToLog(logging.getLogger("wws.startup"))  # type: ignore[return-value]
    if target.isatty():
        return target
    return _Plain(target)  # type: ignore[return-value]
