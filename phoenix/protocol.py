"""The heartbeat protocol: small, versioned JSON datagrams that children send
to the master's socket, and the kernel credentials that vouch for the sender.

A message is one JSON object:
    {"v": 1, "job": 17, "att": 2, "k": "beat", "seq": 41, "p": 3}
with `k` one of KINDS, `p` the progress count (calls to phoenix.heartbeat()),
and for final messages `result` (finished) or `error` (failed). JSON only:
nothing that arrives on a socket is ever unpickled or evaluated.
"""

from __future__ import annotations

import errno
import json
import random
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, TypeGuard

from phoenix.paths import unix_address

VERSION = 1
KINDS = frozenset({"beat", "progress", "finished", "failed"})
FINAL_KINDS = ("finished", "failed")
# Keys of a message body that the master reads, named once.
KIND, SEQ, RESULT, ERROR = "k", "seq", "result", "error"
WAITED = "w"  # seconds a beat waited to be sent (the child's view of a master that is behind)

# One datagram carries at most this much. The kernel would take ~200 KiB, but
# a result that large belongs in a file or a database, and a bounded size keeps
# the master's receive buffer and per-message cost small.
MAX_MESSAGE_BYTES = 64 * 1024
# Receive with room to spare so an oversized datagram shows up as truncated
# (MSG_TRUNC) rather than being silently cut to a valid-looking prefix.
RECV_BUFFER_BYTES = MAX_MESSAGE_BYTES + 1

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
CREDENTIALS_SPACE = socket.CMSG_SPACE(_UCRED.size)


class MessageTooLarge(ValueError):
    """A message (usually a job's result) does not fit in one datagram."""


@dataclass(slots=True)
class Message:
    job: int
    attempt: int
    kind: str
    seq: int
    progress: int
    body: dict[str, Any]


def encode(job: int, attempt: int, kind: str, seq: int, progress: int, **body: Any) -> bytes:
    payload = {"v": VERSION, "job": job, "att": attempt, "k": kind, "seq": seq, "p": progress}
    payload.update(body)
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"the {kind!r} message for job {job} is {len(data)} bytes, over the "
            f"{MAX_MESSAGE_BYTES}-byte limit of one heartbeat datagram"
        )
    return data


def _count(value: object) -> TypeGuard[int]:
    """A plain int (not a bool, not 1.0) that is not negative."""
    return type(value) is int and value >= 0


def decode(data: bytes) -> Message | None:
    """Parse one datagram; None for anything malformed (the caller counts it)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or type(obj.get("v")) is not int or obj["v"] != VERSION:  # not 1.0, not true
        return None
    job, attempt, kind, seq, progress = obj.get("job"), obj.get("att"), obj.get("k"), obj.get("seq"), obj.get("p", 0)
    if type(kind) is not str or kind not in KINDS:  # a list or dict here is unhashable: check the type first
        return None
    if not (_count(job) and _count(attempt) and _count(seq) and _count(progress)):
        return None
    return Message(job, attempt, kind, seq, progress, obj)


def enable_credentials(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


def sender_credentials(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int] | None:
    """(pid, uid) from SCM_CREDENTIALS, filled in by the kernel: a sender cannot
    forge another pid or uid without privileges it does not have."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
            pid, uid, _gid = _UCRED.unpack_from(data)
            return pid, uid
    return None


class Sender:
    """The child's side of the heartbeat socket.

    The socket is connected to the master's path (a full queue then reports
    EAGAIN for this peer, where an unconnected socket could not tell), and it
    reconnects by path after ECONNREFUSED, so it keeps working when a new
    master binds the same path after a crash."""

    # The master may be busy, in the middle of exec, or gone. None of that is
    # fatal to the child: it retries, and its outcome also sits in the outbox.
    RETRYABLE = {errno.EAGAIN, errno.ECONNREFUSED, errno.ENOENT, errno.ENOBUFS, errno.ENOTCONN}

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None

    def _connected(self) -> socket.socket:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Non-blocking: a full queue is EAGAIN, and the caller retries after
            # a jittered sleep instead of blocking in poll() with every other child.
            sock.setblocking(False)
            try:
                with unix_address(self.path) as address:  # a deep state directory's path is over sun_path's limit
                    sock.connect(address)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        return self.sock

    def send_once(self, data: bytes) -> bool:
        try:
            self._connected().send(data)
            return True
        except OSError as exc:
            if exc.errno not in self.RETRYABLE:
                raise
            if exc.errno != errno.EAGAIN and self.sock is not None:
                self.sock.close()  # the master's socket went away: reconnect by path next time
                self.sock = None
            return False

    def send_until(self, data: bytes, deadline: float) -> bool:
        """Retry until sent or until the monotonic `deadline`."""
        delay = 0.01
        while True:
            if self.send_once(data):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(random.uniform(delay, 2 * delay))
            delay = min(delay * 2, 0.5)
