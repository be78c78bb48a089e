"""Logging: one line per event, the event's name first, then key=value
fields (or one JSON object per line with --log-format json, for shippers)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from phoenix.untrusted import visible

log = logging.getLogger("phoenix")

_handler: logging.Handler | None = None
# Set by setup() in the master; a child (forked from it) keeps its master's.
_master_pid: int | None = None


def event(level: int, name: str, **fields: Any) -> None:
    """Log one event: `event("spawn", pid=12, job="key", attempt=1)`."""
    if log.isEnabledFor(level):
        log.log(level, "%s", name, extra={"phoenix_fields": fields})


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "phoenix_fields", None)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        head = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} [{record.process}]"
        # What a job or a user wrote (a key, an error text, a job's own log
        # message) is shown, never obeyed: no escape sequence or carriage
        # return reaches the file raw, and a continuation line is indented, so
        # that every line at the margin is a record Phoenix wrote.
        message = visible(record.getMessage(), multiline=True)
        if fields is None:
            text = f"{head} {message}"
        else:
            # A field of several lines (a reload's whole reason) shows its first
            # line in place and the rest below, indented: still one record.
            shown, below = [], []
            for name, value in fields.items():
                first, newline, rest = str(value).partition("\n")
                shown.append(f"{name}={_plain(first)}")
                if newline:
                    below.append("\n" + visible(rest, multiline=True))
            text = f"{head} {message} " + " ".join(shown) + "".join(below)
        if record.exc_info:
            text += "\n" + visible(self.formatException(record.exc_info), multiline=True)
        return text.rstrip().replace("\n", "\n    ")


def _plain(value: Any) -> str:
    text = str(value)
    # json.dumps escapes every control and non-ASCII character: used whenever the text needs it.
    return json.dumps(text) if (not text or " " in text or '"' in text or visible(text) != text) else text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "master_pid": _master_pid,  # beside "pid", which a child's event sets to the child's
            "pid": record.process,
            "event": record.getMessage() if hasattr(record, "phoenix_fields") else "message",
        }
        if hasattr(record, "phoenix_fields"):
            payload.update(record.phoenix_fields)
        else:
            payload["message"] = record.getMessage()
        if record.exc_info:
            payload["traceback"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup(level: str = "info", fmt: str = "text", file: str | None = None, master_pid: int | None = None) -> None:
    """Configure the root logger (job code's logging goes the same way; the
    fork server configures its own alike, naming its master)."""
    global _handler, _master_pid
    _master_pid = master_pid or os.getpid()
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    _handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(_handler)
    root.setLevel(level.upper())


def reopen() -> None:
    """USR1: reopen the log file (after logrotate moved it)."""
    if isinstance(_handler, logging.FileHandler):
        _handler.acquire()
        try:
            _handler.close()
            _handler.stream = _handler._open()
        finally:
            _handler.release()


def stream_fds() -> set[int]:
    """File descriptors the log writes to, which a child keeps open."""
    stream = getattr(_handler, "stream", None)
    try:
        return {stream.fileno()} if stream is not None else set()
    except (OSError, ValueError):
        return set()
