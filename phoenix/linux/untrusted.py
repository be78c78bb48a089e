"""Strings that come from users and jobs (keys, targets, parameters, error
texts) are data: shown, never interpreted. `visible` makes any of them safe
for a terminal or a log line; `check_key` refuses at submission the keys
that could not be represented faithfully anywhere downstream."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from typing import Any

from phoenix.errors import StateError, UsageError

MAX_KEY_BYTES = 1024

# C0 and C1 controls, DEL, line and paragraph separators, and the bidirectional
# overrides and isolates that reorder what a terminal shows ("Trojan Source").
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_INVISIBLE_BUT_LINES = re.compile(f"(?![\n\t]){_INVISIBLE.pattern}")
_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def visible(text: str, multiline: bool = False) -> str:
    """`text` with every control character written as a visible escape
    (`\\x1b`, `\\r`, `\\x00`, `\\u202e`); `multiline` keeps newlines and tabs
    (a traceback in a log). Lone surrogates, from bytes that were not UTF-8,
    become `\\udcXX` too, so the result always encodes."""
    text = (_INVISIBLE_BUT_LINES if multiline else _INVISIBLE).sub(_escape, text)
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if _has_surrogates(text) else text


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


class KeyRefused(UsageError, ValueError):
    """An idempotency key that cannot be stored and shown faithfully."""


def check_key(key: str) -> None:
    """Refuse a key with control characters, one that is not valid UTF-8, or
    one over MAX_KEY_BYTES; the message names the problem and the fix."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise KeyRefused(f"job key '{visible(key)}' is not valid UTF-8; use a key of printable text") from None
    if size > MAX_KEY_BYTES:
        raise KeyRefused(f"job key of {size} bytes is over the limit of {MAX_KEY_BYTES}; "
                         "use a shorter key (a hash of a long identifier, say)")
    bad = _INVISIBLE.search(key)
    if bad is not None:
        raise KeyRefused(f"job key '{visible(key)}' contains the control character {_escape(bad)} "
                         f"at position {bad.start()}; use a key of printable text")


# JSON a job or a user hands over (parameters, results) nests at most this
# deep: far below the interpreter's recursion limit, so that every process
# that decodes or encodes it again (the master, `phoenix status`, a callback)
# can, whatever its own stack depth.
MAX_JSON_DEPTH = 200
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON `text` nests arrays and objects more than `limit`
    deep. Counting brackets first, the common case reads no character in Python."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for char in _JSON_STRING.sub("", text):
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def storable(text: str) -> str:
    """`text` as every store keeps it: what a UTF-8 text column takes (lone
    surrogates, from bytes that were not UTF-8, become `\\udcXX`) and no NUL,
    which PostgreSQL's text refuses (it becomes `\\x00`). Anything else is
    kept as it is: it is escaped where it is shown (see `visible`)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if _has_surrogates(text) else text


def storable_or_none(text: str | None) -> str | None:
    return None if text is None else storable(text)


def stored_json(text: str) -> Any:
    """The value of JSON read back from a store; the text itself if this
    process cannot read it (damaged, or nested deeper than its stack allows:
    written by an older release or another tool), rather than an exception
    at every read."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return text


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's json reads them, other readers refuse them


def is_number(value: object, *, whole: bool = False) -> bool:
    """Whether a value read back from a store is the number Phoenix wrote
    there (`whole`: an integer): SQLite keeps whatever another tool puts in a
    column (text, bytes), and a bool is no number here."""
    kinds = int if whole else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def text_problem(value: object) -> str | None:
    """What makes a text read back from a store unusable, or None: another
    tool may have stored bytes (a BLOB), or text that is not UTF-8 (SQLite's
    journal reads it with surrogateescape), which no child's order could carry."""
    if not isinstance(value, str):
        return f"not text (a {type(value).__name__})"
    return "not valid UTF-8" if _has_surrogates(value) else None


def json_problem(text: str) -> str | None:
    """What keeps JSON text read back from a store from being read here, or None."""
    try:
        json.loads(text, parse_constant=_not_json)
    except RecursionError:
        return "JSON nested too deep to read"
    except ValueError:
        return "not JSON this process can read"
    return None


def unstorable(key: str) -> bool:
    """A key no store holds (a lone surrogate, a NUL: `check_key` refuses
    both): a lookup by it finds no job, and is not sent to a store that would
    refuse the text."""
    return storable(key) != key


MAX_ERROR_CHARS = 16_000  # a traceback (a job's, a callback's) longer than this is cut in the middle


def cut_traceback(text: str, limit: int = MAX_ERROR_CHARS, json_bytes: int | None = None) -> str:
    """`text` with its middle cut out to `limit` characters (the head and the
    end of a traceback matter), and, given `json_bytes`, short enough that it
    takes no more as a JSON string: a character such as a lone surrogate or
    a NUL takes 6 bytes there."""
    while True:
        if len(text) > limit:
            text = text[: limit // 2] + "\n[... traceback cut ...]\n" + text[len(text) - limit // 2:]
        if json_bytes is None or len(json.dumps(text)) <= json_bytes or limit == 0:
            return text
        limit = min(limit, len(text)) // 2


# What open() says of something else than a readable file put at the path (a
# socket, a file where the outbox directory was, one the master may not read).
_PUT_THERE = frozenset({errno.ENXIO, errno.ENOTDIR, errno.EACCES, errno.EPERM})


class UnusableFile(StateError, OSError):
    """A file a job left for the master that the master will not read: the message says why."""


def read_left_file(path: str, limit: int) -> bytes | None:
    """The bytes of a file a job's process left for the master (its outbox),
    or None if there is none. Jobs write that directory, so the file is
    looked at before it is read: a FIFO there blocked the master's loop in
    open() for good, a 3 GB file read whole had the master OOM-killed at
    every start, and a symbolic link would have the master (root, perhaps)
    read another file into its quarantine; a file of another user's (the
    directory opened to others after the master started) is not its job's
    (whose child runs as the master's user, as its connection must: heartbeats.py).
    Each raises UnusableFile naming why; any other error of open or read is raised as it is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnusableFile(exc.errno, "a symbolic link, not a file the job wrote", path) from None
        if exc.errno in _PUT_THERE:
            raise UnusableFile(exc.errno, f"not a file the master can read ({exc.strerror})", path) from None
        raise
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise UnusableFile(errno.EINVAL, "not a regular file (a FIFO, a device or a directory)", path)
        if found.st_uid != os.geteuid():
            raise UnusableFile(errno.EPERM, f"owned by uid {found.st_uid}, not by this user: not its job's", path)
        if found.st_size > limit:
            raise UnusableFile(errno.EFBIG, f"{found.st_size} bytes, more than any message ({limit})", path)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew while read
            raise UnusableFile(errno.EFBIG, f"over {limit} bytes, more than any message", path)
        return b"".join(chunks)
    finally:
        os.close(fd)
