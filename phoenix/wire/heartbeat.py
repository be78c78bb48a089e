"""The heartbeat protocol: small, versioned JSON messages that each child
sends on its own connection to the master's socket (one message per
SOCK_SEQPACKET record), and the kernel credentials that vouch for it.

A message is one JSON object:
    {"v": 1, "job": 17, "att": 2, "k": "beat", "seq": 41, "p": 3}
with `k` one of KINDS, `p` the progress count (calls to phoenix.heartbeat()),
for final messages `result` (finished) or `error` (failed), `pr` (a job's
phoenix.progress(): done, total, note) on a beat or progress message, and
`cp` (the job's saved state) on a checkpoint, which the master acknowledges
as it does a final. JSON only: nothing that arrives on a socket is ever
unpickled or evaluated.
"""

from __future__ import annotations

import _thread
import errno
import json
import os
import re
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeGuard

from phoenix.errors import UsageError
from phoenix.linux.clock import SYSTEM
from phoenix.linux.paths import SUN_PATH_MAX, unix_address

VERSION = 1
KINDS = frozenset({"beat", "progress", "finished", "failed", "checkpoint"})
FINAL_KINDS = ("finished", "failed")
CHECKPOINT = "checkpoint"  # acknowledged like a final, but the child goes on
# Keys of a message body that the master reads, named once.
KIND, SEQ, RESULT, ERROR = "k", "seq", "result", "error"
PROGRESS, SAVED = "pr", "cp"  # phoenix.progress()'s [done, total, note]; a checkpoint's object
# A failed final of a job that let phoenix.Interrupted end it (a polite stop):
# what stopped it, so that the master records `interrupted` when it asked.
INTERRUPTED = "interrupted"

# A job's result, as the compact JSON `encode` writes, is at most this much:
# the limit docs/writing-jobs.md promises ("JSON, at most 64 KiB"). The kernel would take
# ~200 KiB, but a result that large belongs in a file or a database, and a
# bounded size keeps the master's receive buffer and per-message cost small.
MAX_RESULT_BYTES = 64 * 1024
MAX_CHECKPOINT_BYTES = 64 * 1024  # the same for a checkpoint (docs/long-jobs.md)
# One message carries at most this much: a whole result and the envelope around
# it (version, job, attempt, kind, numbers: about 120 bytes at their largest),
# so the limit a job meets is the result's own, never the message's.
MAX_MESSAGE_BYTES = MAX_RESULT_BYTES + 1024
# Receive with room to spare so an oversized record shows up as longer than
# the limit rather than being silently cut to a valid-looking prefix.
RECV_BUFFER_BYTES = MAX_MESSAGE_BYTES + 1

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def jitter(low: float, high: float) -> float:
    """A random time between `low` and `high`, so that children do not act in
    step. From os.urandom, not the random module: a module that registers an
    at-fork hook (random reseeds itself) costs every forked child its run."""
    return low + (high - low) * int.from_bytes(os.urandom(2), "big") / 0xFFFF


class MessageTooLarge(UsageError, ValueError):
    """A message (usually a job's result) does not fit in one record."""


class ResultTooLarge(MessageTooLarge):
    """A job's result is over MAX_RESULT_BYTES of JSON; `size` is its real size."""

    def __init__(self, size: int) -> None:
        super().__init__(
            f"the job's result is {size} bytes of JSON, more than the {MAX_RESULT_BYTES}-byte limit of a result "
            "(64 KiB); write large results to a file or a database and return its path or key"
        )
        self.size = size


class CheckpointTooLarge(MessageTooLarge):
    """A checkpoint is over MAX_CHECKPOINT_BYTES of JSON; `size` is its real size."""

    def __init__(self, size: int) -> None:
        super().__init__(
            f"the checkpoint is {size} bytes of JSON, more than the {MAX_CHECKPOINT_BYTES}-byte limit of a "
            "checkpoint (64 KiB); save a cursor (an offset, a last key) rather than the data, or write the data "
            "to a file and checkpoint its path"
        )
        self.size = size


@dataclass(slots=True)
class Message:
    job: int
    attempt: int
    kind: str
    seq: int
    progress: int
    body: dict[str, Any]


# One encoder for every message: json.dumps with options builds a new one per call.
_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def encode(job: int, attempt: int, kind: str, seq: int, progress: int, **body: Any) -> bytes:
    payload = {"v": VERSION, "job": job, "att": attempt, "k": kind, "seq": seq, "p": progress}
    spliced = None
    for name, limit, too_large in ((RESULT, MAX_RESULT_BYTES, ResultTooLarge),
                                   (SAVED, MAX_CHECKPOINT_BYTES, CheckpointTooLarge)):
        if name in body:  # measured on its own: the limit a job meets is its value's, not the message's
            value_json = _encode_json(body.pop(name))  # ASCII (ensure_ascii): one byte per character
            if len(value_json) > limit:
                raise too_large(len(value_json))
            spliced = (name, value_json)
    payload.update(body)
    text = _encode_json(payload)
    if spliced is not None:  # spliced in: the value is encoded once
        text = f'{text[:-1]},"{spliced[0]}":{spliced[1]}}}'
    data = text.encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"the {kind!r} message for job {job} is {len(data)} bytes, over the "
            f"{MAX_MESSAGE_BYTES}-byte limit of one heartbeat message"
        )
    return data


def encode_final(job: int, attempt: int, kind: str, seq: int, progress: int, news: list[Any] | None,
                 **body: Any) -> tuple[bytes | None, bytes]:
    """A final message (`kind` finished or failed), and the job's latest
    phoenix.progress() `news` that no message carried yet (None: nothing
    unsent): (None, the final numbered `seq` carrying it) when both fit one
    message, else (a progress message numbered `seq`, the final numbered
    `seq + 1` without it). A final within its documented limit always fits
    on its own; what rides with it must never push it over (a 200-character
    note of escaped characters is 2.4 KB), so the news goes first in a
    message of its own. Raises ResultTooLarge as `encode` does."""
    if news is not None:
        try:
            return None, encode(job, attempt, kind, seq, progress, **body, **{PROGRESS: news})
        except (ResultTooLarge, CheckpointTooLarge):
            raise  # the job's own value is over its limit, whatever rides with it
        except MessageTooLarge:
            return (encode(job, attempt, "progress", seq, progress, **{PROGRESS: news}),
                    encode(job, attempt, kind, seq + 1, progress, **body))
    return None, encode(job, attempt, kind, seq, progress, **body)


def _count(value: object) -> TypeGuard[int]:
    """A plain int (not a bool, not 1.0) that is not negative."""
    return type(value) is int and value >= 0


# The C scanner under json.loads, without its Python layers (a third of the
# cost of reading a beat): same grammar, same limits.
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def decode(data: bytes) -> Message | None:
    """Parse one message; None for anything malformed (the caller counts it)."""
    try:
        text = data.decode()  # a str: json.loads would first guess the encoding of bytes, in Python
        obj, end = _scan_once(text, 0)
    except (ValueError, UnicodeDecodeError, RecursionError, StopIteration):
        return None
    if end != len(text):  # something after the object (encode never writes whitespace)
        return None
    if not isinstance(obj, dict) or type(obj.get("v")) is not int or obj["v"] != VERSION:  # not 1.0, not true
        return None
    job, attempt, kind, seq, progress = obj.get("job"), obj.get("att"), obj.get("k"), obj.get("seq"), obj.get("p", 0)
    if type(kind) is not str or kind not in KINDS:  # a list or dict here is unhashable: check the type first
        return None
    if not (_count(job) and _count(attempt) and _count(seq) and _count(progress)):
        return None
    return Message(job, attempt, kind, seq, progress, obj)


# A plain beat exactly as `encode` writes it for one attempt, up to its sequence
# number: nearly every message. Bytes that start with the attempt's prefix and
# end as _PLAIN_TAIL are JSON that `decode` accepts with the same values (the
# grammar is a subset: no spaces, no other keys, no leading zeros; at most 18
# digits, so int() never meets its digit limit), so they skip the parser and
# the dict; anything else goes through `decode` and its checks.
_PLAIN_TAIL = re.compile(rb'(0|[1-9][0-9]{0,17}),"p":(0|[1-9][0-9]{0,17})\}')


def plain_beat_prefix(job: int, attempt: int) -> bytes:
    return b'{"v":%d,"job":%d,"att":%d,"k":"beat","seq":' % (VERSION, job, attempt)


def plain_beat(buffer: bytes | bytearray, size: int, prefix: bytes) -> tuple[int, int] | None:
    """(seq, progress) of a plain beat of the attempt whose `prefix` is given,
    in buffer[:size]; None: not one (the caller decodes it in full)."""
    if not buffer.startswith(prefix, 0, size):
        return None
    match = _PLAIN_TAIL.fullmatch(buffer, len(prefix), size)
    if match is None:
        return None
    return int(match[1]), int(match[2])


def progress_view(value: list[Any] | str | None) -> dict[str, Any] | None:
    """A progress as status and show print it: {"done", "total", "note"}."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, list) or len(value) != 3:
        return None
    return {"done": value[0], "total": value[1], "note": value[2]}


def ack(seq: int) -> bytes:
    """The master's word that it holds a final or checkpoint message (numbered `seq`) for good."""
    return b'{"v":1,"ack":%d}' % seq


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process that connected `sock` (SO_PEERCRED), filled in
    by the kernel at connect: a child cannot forge another pid or uid without
    privileges it does not have."""
    pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid


class Sender:
    """The child's connection to the master (SOCK_SEQPACKET, close-on-exec:
    a program the job execs cannot speak for it). Beats, progress and the
    final outcome travel on it, one message per record; the master answers a
    final with an ack. It reconnects by path after EOF, ECONNREFUSED or
    ENOENT, so it keeps working when a new master binds the same path after a
    crash. Shared by the beat thread and the main thread: the lock keeps one
    socket, and `stop_beats` ends the beats once the final is on its way."""

    # The master may be busy, in the middle of exec, or gone. None of that is
    # fatal to the child: it retries, and its outcome goes to the outbox at last.
    RETRYABLE = {errno.EAGAIN, errno.ECONNREFUSED, errno.ENOENT, errno.ENOBUFS, errno.ENOTCONN, errno.EPIPE,
                 errno.ECONNRESET}

    def __init__(self, path: str) -> None:
        self.path = path
        # Nearly always: no detour through unix_address (a context manager, run in every child).
        self.fits = len(os.fsencode(path)) <= SUN_PATH_MAX
        self.sock: socket.socket | None = None
        self.lock = _thread.allocate_lock()
        self.beats_stopped = False

    def _connected(self) -> socket.socket:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            try:  # EAGAIN: the master's backlog is full; retried like a refusal
                if self.fits:
                    sock.connect(self.path)
                else:
                    with unix_address(self.path) as address:  # a deep state directory's path is over sun_path's limit
                        sock.connect(address)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        return self.sock

    def connect(self) -> None:
        """Connect now, if the master is there (else the first send retries):
        from here on the master sees this child's EOF when it ends."""
        with self.lock:
            try:
                self._connected()
            except OSError as exc:
                if exc.errno not in self.RETRYABLE:
                    raise

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()  # the master went away: reconnect by path next time
            self.sock = None

    def send_once(self, data: bytes) -> bool:
        """Send a beat; False: not sent (retry later)."""
        if self.beats_stopped:
            return True  # the final is on its way: beats end here
        return self._send(data)

    def _send(self, data: bytes) -> bool:
        with self.lock:
            try:
                self._connected().send(data)
                return True
            except OSError as exc:
                if exc.errno not in self.RETRYABLE:
                    raise
                if not (exc.errno == errno.EAGAIN and self.sock is not None):  # a full queue keeps the connection
                    self._drop()
                return False

    def deliver(self, data: bytes, seq: int, deadline: float) -> bool:
        """Send the final message and wait for the master's ack, resending on
        a new connection after EOF or a refusal, until the monotonic
        `deadline`. False: no master took it (the caller writes the outbox)."""
        with self.lock:
            self.beats_stopped = True
        return self.round_trip(data, seq, deadline)

    def round_trip(self, data: bytes, seq: int, deadline: float) -> bool:
        """Send a message the master acknowledges (a final, a checkpoint) and
        wait for its ack, as `deliver` does, with the beats going on. Only
        one thread waits for acks (the job's): nothing else is ever read."""
        expected = ack(seq)
        delay = 0.01
        while True:
            try:
                sent = self._send(data)
            except OSError:
                # Not one a retry mends (EACCES: the job gave up the rights
                # the socket needs): the outbox keeps the outcome instead.
                return False
            if sent and self._acked(expected, deadline):
                return True
            if SYSTEM.monotonic() >= deadline:
                return False
            # Jitter: the children of a crashed master do not all reconnect in step.
            time.sleep(jitter(delay, 2 * delay))
            delay = min(delay * 2, 0.5)

    def _acked(self, expected: bytes, deadline: float) -> bool:
        """Wait for the ack; False (and the connection dropped) at EOF, on an
        error, or at the deadline."""
        sock = self.sock
        assert sock is not None
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while (left := deadline - SYSTEM.monotonic()) > 0:
            if not poller.poll(left * 1000):
                continue
            try:
                reply = sock.recv(64)
            except BlockingIOError:
                continue
            except OSError:
                reply = b""
            if reply == expected:
                return True
            if not reply:  # EOF: the master is gone; a new one may bind the path
                break
        with self.lock:
            self._drop()
        return False
