"""Logging: one line per event, the event's name first, then key=value
fields (or one JSON object per line with --log-format json, for shippers)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from phoenix.linux.untrusted import visible

log = logging.getLogger("phoenix")

_handler: logging.StreamHandler[Any] | None = None
_formatter: TextFormatter | JsonFormatter | None = None  # _handler's, as setup() made it
# Set by setup() in the master; a child (forked from it) keeps its master's.
_master_pid: int | None = None
# In a job child, the stderr it had before its own became the job's output file.
_master_stream: Any = None


def event(level: int, name: str, **fields: Any) -> None:
    """Log one event: `event("spawn", pid=12, job="key", attempt=1)`."""
    if not log.isEnabledFor(level):
        return
    handler, formatter = _handler, _formatter
    if (handler is not None and formatter is not None and _reaches_only(handler, formatter, level)
            and _write(handler, formatter.event_line(time.time(), level, os.getpid(), name, fields))):
        return
    # The record log.log would make, without its walk up the stack to find
    # the caller, which is always this function.
    log.handle(log.makeRecord(log.name, level, __file__, _EVENT_LINE, "%s", (name,), None, "event",
                              {"phoenix_fields": fields}))


_EVENT_LINE = event.__code__.co_firstlineno


def _write(handler: logging.StreamHandler[Any], line: str) -> bool:
    """Write an event's line as the handler would, without a LogRecord and the
    logging machinery around it (two events per job: most of what logging
    cost the master per job). False if it could not: the usual way reports why."""
    handler.acquire()
    try:
        stream = handler.stream
        if stream is None:  # a closed FileHandler: the usual way opens it again
            return False
        stream.write(line + handler.terminator)
    except Exception:  # noqa: BLE001 - a full disk, a closed stream: handleError says so, the usual way
        return False
    else:
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - written already: the usual way would only write it twice
            pass
        return True
    finally:
        handler.release()


def _reaches_only(handler: logging.Handler, formatter: logging.Formatter, level: int) -> bool:
    """Whether a Phoenix event goes to setup()'s handler alone, formatted as
    setup() said and unfiltered: not once anything else (an app, a job's code)
    added a handler, a filter or a record factory."""
    root = logging.root
    return (log.propagate and not log.disabled and not log.handlers and not log.filters and log.parent is root
            and not root.filters
            and len(root.handlers) == 1 and root.handlers[0] is handler and not handler.filters
            and level >= handler.level and handler.formatter is formatter
            and logging.getLogRecordFactory() is logging.LogRecord)


_stamp: tuple[int, str] = (-1, "")  # the last second formatted, which the next line most likely shares


def _time_stamp(created: float) -> str:
    global _stamp
    second, stamp = _stamp
    if int(created) != second:
        second = int(created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))
        _stamp = (second, stamp)
    return f"{stamp}.{int((created - second) * 1000):03d}"  # milliseconds, as a LogRecord's msecs


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        exc_text = self.formatException(record.exc_info) if record.exc_info else None
        return _text_line(record.created, record.levelname, record.process, record.getMessage(),
                          getattr(record, "phoenix_fields", None), exc_text)

    def event_line(self, created: float, level: int, pid: int, name: str, fields: dict[str, Any]) -> str:
        return _text_line(created, logging.getLevelName(level), pid, name, fields, None)


def _text_line(created: float, levelname: str, pid: int | None, message: str, fields: dict[str, Any] | None,
               exc_text: str | None) -> str:
    head = f"{_time_stamp(created)} {levelname:<7} [{pid}]"
    # What a job or a user wrote (a key, an error text, a job's own log
    # message) is shown, never obeyed: no escape sequence or carriage
    # return reaches the file raw, and a continuation line is indented, so
    # that every line at the margin is a record Phoenix wrote.
    if not message.isprintable():  # (all that `visible` escapes is unprintable: most messages pass as they are)
        message = visible(message, multiline=True)
    if fields is None:
        text = f"{head} {message}"
    else:
        # A field of several lines (a reload's whole reason) shows its first
        # line in place and the rest below, indented: still one record.
        shown, below = [], []
        for name, value in fields.items():
            if type(value) is int:  # a pid, an attempt number: nothing to escape, quote or split
                shown.append(f"{name}={value}")
                continue
            first, newline, rest = str(value).partition("\n")
            shown.append(f"{name}={_plain(first)}")
            if newline:
                below.append("\n" + visible(rest, multiline=True))
        text = f"{head} {message} " + " ".join(shown) + "".join(below)
    if exc_text:
        text += "\n" + visible(exc_text, multiline=True)
    return text.rstrip().replace("\n", "\n    ")


def _plain(value: Any) -> str:
    text = str(value)
    if text.isprintable() and text and " " not in text and '"' not in text:
        return text  # the common case (all that `visible` escapes is unprintable)
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

    def event_line(self, created: float, level: int, pid: int, name: str, fields: dict[str, Any]) -> str:
        payload = {"ts": created, "level": logging.getLevelName(level).lower(), "master_pid": _master_pid,
                   "pid": pid, "event": name, **fields}
        return json.dumps(payload, default=str)


LOG_FILE_MODE = 0o600  # a new log file's mode, whatever the umask (0666 under umask 000: anyone could forge lines)


class PrivateFileHandler(logging.FileHandler):
    """A FileHandler whose new file is created 0600 exactly, not 0666 minus
    the umask. An existing file keeps the mode it has (the operator's choice)."""

    def _open(self) -> Any:
        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors, opener=_open_private)


def _open_private(path: str, flags: int) -> int:
    while True:
        try:
            fd = os.open(path, flags | os.O_EXCL | os.O_CLOEXEC, LOG_FILE_MODE)
        except FileExistsError:
            try:
                return os.open(path, (flags & ~os.O_CREAT) | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # rotated away in between: make it
        os.fchmod(fd, LOG_FILE_MODE)
        return fd


def setup(level: str = "info", fmt: str = "text", file: str | None = None, master_pid: int | None = None,
          stream: Any = None) -> None:
    """Configure the root logger (job code's logging goes the same way; the
    fork server configures its own alike, naming its master). `stream`: where
    records go without a file, if not sys.stderr (in a job child, whose
    stderr is the job's output file)."""
    global _handler, _formatter, _master_pid, _master_stream
    _master_pid = master_pid or os.getpid()
    _master_stream = stream or _master_stream
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _handler = PrivateFileHandler(file) if file else logging.StreamHandler(_master_stream or sys.stderr)
    _formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    _handler.setFormatter(_formatter)
    root.addHandler(_handler)
    root.setLevel(level.upper())


def keep_on_stream(stream: Any) -> None:
    """In a job child whose stderr just became the job's output file: the log
    keeps writing where it wrote (the master's stderr), through `stream`."""
    global _master_stream
    _master_stream = stream
    if _handler is not None and not isinstance(_handler, logging.FileHandler):
        _handler.setStream(stream)


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
