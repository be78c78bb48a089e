"""The control socket: a stream socket in the state directory on which the
CLI asks a running master for its live state or tells it to act. One JSON
object per line each way, one request per connection. Only the master's own
uid (checked with SO_PEERCRED) is served; nothing received is ever evaluated."""

from __future__ import annotations

import json
import os
import selectors
import socket
import struct
from pathlib import Path
from typing import Any, Callable

from phoenix.paths import unix_address
from phoenix.sockets import bind_private

MAX_REQUEST_BYTES = 64 * 1024
_UCRED = struct.Struct("3i")


class ControlError(RuntimeError):
    """No master answers on the control socket, or it refused the request."""


def bind(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bind_private(sock, path)
    sock.listen(64)
    sock.setblocking(False)
    return sock


class ControlServer:
    """Accepts connections without ever blocking the master loop."""

    def __init__(self, sock: socket.socket, selector: selectors.BaseSelector,
                 handle: Callable[[dict[str, Any]], dict[str, Any]], on_rejected: Callable[[str], None]) -> None:
        self.sock = sock
        self.selector = selector
        self.handle = handle
        self.on_rejected = on_rejected
        self.buffers: dict[socket.socket, bytearray] = {}
        selector.register(sock, selectors.EVENT_READ, self.accept)

    def rebind(self, sock: socket.socket) -> None:
        """Serve on a new listening socket (its path was removed or rebuilt)."""
        self.accept()  # requests that reached the old one before its path went are still answered
        self.selector.unregister(self.sock)
        self.sock.close()
        self.sock = sock
        self.selector.register(sock, selectors.EVENT_READ, self.accept)

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            if uid != os.getuid():
                self.on_rejected("foreign_uid_control")  # a fixed label: counters must not grow per pid
                conn.close()
                continue
            conn.setblocking(False)
            self.buffers[conn] = bytearray()
            self.selector.register(conn, selectors.EVENT_READ, lambda c=conn: self.read(c))

    def read(self, conn: socket.socket) -> None:
        buffer = self.buffers[conn]
        try:
            chunk = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        buffer += chunk
        if b"\n" not in buffer and chunk and len(buffer) <= MAX_REQUEST_BYTES:
            return
        line = bytes(buffer).split(b"\n", 1)[0]
        if len(line) > MAX_REQUEST_BYTES:
            self.on_rejected("oversized control request")
            self._finish(conn, {"ok": False, "error": f"request over {MAX_REQUEST_BYTES} bytes: send one small JSON object on one line"})
            return
        try:
            request = json.loads(line) if chunk or line else None
            if not isinstance(request, dict):
                raise ValueError("not an object")
            reply = self.handle(request)
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep
            self.on_rejected("malformed control request")
            reply = {"ok": False, "error": "malformed request: send one JSON object on one line"}
        self._finish(conn, reply)

    def _finish(self, conn: socket.socket, reply: dict[str, Any]) -> None:
        self.selector.unregister(conn)
        del self.buffers[conn]
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)  # a reader that does not read is dropped, not waited for
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        for conn in list(self.buffers):
            self.selector.unregister(conn)
            conn.close()
        self.buffers.clear()


def request(path: Path, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the master and return its reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with unix_address(path) as address:
            sock.connect(address)
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"no master is listening on {path}") from None
    except (ConnectionResetError, BrokenPipeError):
        raise ControlError(f"the master on {path} closed the connection (it may be stopping)") from None
    except TimeoutError:
        raise ControlError(f"the master did not answer on {path} within {timeout} s") from None
    except PermissionError:
        raise  # another user's state directory: the CLI says whose to run as
    except OSError as exc:  # e.g. the state directory is gone: no master can be asked there
        raise ControlError(f"cannot reach a master on {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the master's reply on {path} was not JSON: {bytes(data[:200])!r}") from None
    if not reply.get("ok", False):
        raise ControlError(reply.get("error", "the master refused the request"))
    return reply
