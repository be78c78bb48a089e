"""The control socket: a stream socket in the state directory on which the
CLI asks a running master for its live state or tells it to act. One JSON
object per line each way, one request per connection, a bounded number of
connections, each with a deadline. Only the master's own
uid (checked with SO_PEERCRED) is served; nothing received is ever evaluated."""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import select
import selectors
import socket
import struct
from pathlib import Path
from typing import Any, Callable

from phoenix import log
from phoenix.errors import Unavailable
from phoenix.linux.clock import SYSTEM, Clock
from phoenix.linux.paths import unix_address
from phoenix.linux.sockets import bind_private
from phoenix.linux.untrusted import visible

MAX_REQUEST_BYTES = 64 * 1024
# A bound on connections held at once: hostile or stuck clients cost the master
# at most this many file descriptors; past it the oldest connection goes, so
# that a newcomer (an operator's `phoenix status`) is still answered.
MAX_CLIENTS = 64
# Seconds a client has to send its whole request, and again to read the reply.
REQUEST_TIMEOUT = 5.0
# Out of file descriptors at accept: the bound drops this far below the number
# of connections held, leaving descriptors to the master's own work (forks, pidfds).
FD_HEADROOM = 4
WARNING_INTERVAL = 10.0  # seconds between two warnings about shed or evicted clients
BOUND_RESTORED_AFTER = 60.0  # seconds without a descriptor shortage before the bound is whole again
# A waiting client that can be neither accepted nor shed (no descriptor at all,
# not even the reserve: ENFILE, or the reserve lost) keeps the listener readable:
# it is not watched for this long, or the master's loop would spin on it.
PARK_WHEN_STARVED = 0.25
_SHED_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_UCRED = struct.Struct("3i")


class ControlError(Unavailable, RuntimeError):
    """No master answers on the control socket, or it refused the request."""


class ForeignServer(ControlError):
    """The control socket is served by a process of another user."""


class MalformedReply(ControlError):
    """A reply that lacks a field the command needs, or has one of another type."""


class CutOff(ControlError):
    """The connection closed before the reply's end: the master replaced
    itself (its exec closes the connection) or went away mid-reply. Not a
    malformed reply: a poll asks again."""


class NoAnswer(ControlError):
    """The request was delivered but the master did not answer in time (stopped
    by SIGSTOP, a paused VM, stuck): whether it acts on it is unknown, as it
    reads it once it runs again. The CLI exits 4 (not responding), the
    dashboard answers 504; neither calls it refused."""

    def __init__(self, path: Path, timeout: float, what: str = "the request", message: str | None = None) -> None:
        super().__init__(message or f"the master did not answer on {path} within {timeout:g} s; {what} was "
                         "delivered and may still take effect once it runs again (`phoenix status` says whether "
                         "it is stopped)")
        self.path, self.timeout = path, timeout


def bind(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bind_private(sock, path)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _open_reserve() -> int | None:
    """A spare descriptor, given up for a moment when accept fails for want of one."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def _has_waiting_connection(sock: socket.socket) -> bool:
    poller = select.poll()  # not select.select: the descriptor may be past FD_SETSIZE
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class ControlServer:
    """Accepts connections without ever blocking the master loop, and without
    letting any client, however it behaves, take the master down: at most
    `max_clients` connections, each closed `timeout` s after it was accepted
    if it has not sent a whole request (and again if it does not read the
    reply), and accept failures for want of descriptors or memory shed the
    newcomer instead of raising. The loop asks `next_deadline()` and calls
    `expire(now)`."""

    def __init__(self, sock: socket.socket, selector: selectors.BaseSelector,
                 handle: Callable[[dict[str, Any]], dict[str, Any]], on_rejected: Callable[[str], None],
                 max_clients: int = MAX_CLIENTS, timeout: float = REQUEST_TIMEOUT, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self.sock = sock
        self.selector = selector
        self.handle = handle
        self.on_rejected = on_rejected
        self.max_clients = self.full_bound = max_clients
        self.lowered_at = 0.0  # monotonic: the last descriptor shortage that lowered max_clients
        self.timeout = timeout
        self.buffers: dict[socket.socket, bytearray] = {}  # reading a request
        self.replies: dict[socket.socket, memoryview] = {}  # writing a reply the client has not taken yet
        # Every connection held, in the order its deadline was set: the first is due first.
        self.deadlines: dict[socket.socket, float] = {}
        self.exit_watchers: list[socket.socket] = []  # `phoenix stop`s told how the master ends (report_exit)
        self.reserve_fd = _open_reserve()
        self.unwarned: dict[str, int] = {}  # shed or evicted since the last warning, by reason
        self.warned_at = -WARNING_INTERVAL
        self.parked_until = 0.0  # monotonic: the listener is not watched until then (0: watched)
        selector.register(sock, selectors.EVENT_READ, self.accept)

    def rebind(self, sock: socket.socket) -> None:
        """Serve on a new listening socket (its path was removed or rebuilt)."""
        self.accept()  # requests that reached the old one before its path went are still answered
        self.selector.unregister(self.sock)
        self.sock.close()
        self.sock = sock
        self.parked_until = 0.0
        self.selector.register(sock, selectors.EVENT_READ, self.accept)

    def stop_listening(self) -> None:
        """Leave new connections in the backlog: a replacement's new image (or new master) takes them."""
        self.selector.unregister(self.sock)

    def listen_again(self) -> None:
        """The replacement did not happen: accept here again."""
        self.selector.register(self.sock, selectors.EVENT_READ, self.accept)

    def answer_accepted(self, within: float) -> None:
        """Before an exec: read and answer, for at most `within` seconds, the
        requests of connections already accepted (a `reload --wait` polling
        status, say), whose connections the exec would close under the
        client's feet."""
        deadline = self.clock.monotonic() + within
        poller = select.poll()
        for conn in self.buffers:
            poller.register(conn, select.POLLIN)
        while self.buffers and (left := deadline - self.clock.monotonic()) > 0:
            for fd, _event in poller.poll(left * 1000):
                ready = next((c for c in self.buffers if c.fileno() == fd), None)
                poller.unregister(fd)
                if ready is not None:
                    self.read(ready)
                    if ready in self.buffers:  # only part of the request so far
                        poller.register(ready, select.POLLIN)

    def _park(self) -> None:
        """Stop watching the listener for PARK_WHEN_STARVED. It stays registered
        (a replacement unregisters and registers it by itself), watched for
        writing: a listening socket is never writable."""
        if not self.parked_until:
            self.selector.modify(self.sock, selectors.EVENT_WRITE, self.accept)
        self.parked_until = self.clock.monotonic() + PARK_WHEN_STARVED

    def _unpark(self) -> None:
        self.parked_until = 0.0
        try:
            self.selector.modify(self.sock, selectors.EVENT_READ, self.accept)
        except KeyError:
            pass  # unregistered meanwhile (a replacement): whoever registers it again watches it for reading

    # -- accepting ------------------------------------------------------------------

    def accept(self) -> None:
        if self.reserve_fd is None:
            self.reserve_fd = _open_reserve()  # lost in an earlier shortage: take it back when there is one
        if self.max_clients < self.full_bound and self.clock.monotonic() - self.lowered_at > BOUND_RESTORED_AFTER:
            self.max_clients = self.full_bound  # the shortage passed; if not, the next accept lowers it again
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno not in _SHED_ERRNOS or not self._make_room(exc):
                    return
                continue
            try:
                _pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
                conn.setblocking(False)
            except OSError:
                conn.close()
                continue
            if uid != os.getuid():
                self.on_rejected("foreign_uid_control")  # a fixed label: counters must not grow per pid
                conn.close()
                continue
            while len(self.deadlines) >= self.max_clients:
                self._evict_oldest()
            self.buffers[conn] = bytearray()
            self.deadlines[conn] = self.clock.monotonic() + self.timeout
            self.selector.register(conn, selectors.EVENT_READ, functools.partial(self.read, conn))

    def _make_room(self, exc: OSError) -> bool:
        """accept failed for want of a descriptor (or kernel memory). With
        connections held: lower the bound below them and let the oldest go,
        so the newcomer gets its descriptor. With none: the reserve trick,
        give up the spare descriptor, accept the newcomer and hang up on it,
        take the spare again. True if the backlog may be worth another accept."""
        if not _has_waiting_connection(self.sock):
            return False  # accept fails so even with no one waiting: nothing to make room for
        detail = exc.strerror or str(exc)
        if self.deadlines:
            self.max_clients = max(1, len(self.deadlines) - FD_HEADROOM)
            self.lowered_at = self.clock.monotonic()
            self._warn("control_fd_shortage", detail)
            while len(self.deadlines) >= self.max_clients:
                self._evict_oldest()
            return True
        if self.reserve_fd is not None:
            os.close(self.reserve_fd)
            self.reserve_fd = None
        try:
            conn, _ = self.sock.accept()
            conn.close()
        except OSError:
            conn = None
        self.reserve_fd = _open_reserve()
        if conn is None:
            self._warn("control_shed_impossible", detail)
            self._park()
            return False
        self.on_rejected("control connection shed")
        self._warn("control_shed", detail)
        return self.reserve_fd is not None

    def _evict_oldest(self) -> None:
        """Close the connection held longest, after serving it if its request
        has come in complete since it was last read."""
        conn = next(iter(self.deadlines))
        if conn in self.buffers:
            self.read(conn)
            if conn not in self.buffers:
                return  # served: its reply is sent, or queued behind the newest deadline
        self._drop(conn, "control connection evicted",
                   f"too many control connections (over {self.max_clients}): this one was the oldest")
        self._warn("control_clients_full", f"{self.max_clients} connections held")

    # -- requests and replies ----------------------------------------------------------

    def read(self, conn: socket.socket) -> None:
        buffer = self.buffers.get(conn)
        if buffer is None:
            return  # dropped earlier in the same turn of the loop (evicted, say) while its event waited
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
            self._reply(conn, _line({
                "ok": False,
                "error": f"request over {MAX_REQUEST_BYTES} bytes: send one small JSON object on one line",
            }))
            return
        try:
            request = json.loads(line) if chunk or line else None
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep; ValueError: also bad UTF-8
            self.on_rejected("malformed control request")
            self._reply(conn, _line({"ok": False, "error": "malformed request: send one JSON object on one line"}))
            return
        keep = False
        try:
            answer = self.handle(request)
            # `phoenix stop` asks to hear how the master ends: this connection is kept until then.
            keep = request.get("cmd") == "stop" and request.get("report_exit") is True and answer.get("ok", True)
            reply = _line({**answer, "report_exit": True} if keep else answer)
        except Exception as exc:  # noqa: BLE001 - a request the master cannot serve must not end it
            log.log.exception("control_request_failed")
            self.on_rejected("failed control request")
            reply = _line({"ok": False,
                           "error": f"the master could not serve this request: {type(exc).__name__}: {exc}"})
        if keep:
            self._keep_for_exit(conn, reply)
        else:
            self._reply(conn, reply)

    def _keep_for_exit(self, conn: socket.socket, reply: bytes) -> None:
        """Answer now, then hold the connection (outside the deadlines: a stop
        may wait long for its children) until report_exit."""
        self.selector.unregister(conn)
        del self.buffers[conn]
        del self.deadlines[conn]
        try:
            sent = conn.send(reply, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)  # a few bytes into an empty buffer
        except OSError:
            sent = 0
        if sent != len(reply):
            conn.close()  # the client went away (or cannot take a line): it learns nothing more
            return
        self.exit_watchers.append(conn)

    def report_exit(self, ending: dict[str, Any], linger: float = 0.0) -> None:
        """Tell each `phoenix stop` still waiting how this master ends (its
        last act before exit): an exit code, and what went wrong, if anything.
        With `linger` (the master is its PID namespace's init, whose exit
        SIGKILLs every process of the namespace), wait up to that long for
        those of them in the namespace to exit first: a container's preStop
        hook then ends on its own, not as killed (exit 137)."""
        line = _line(ending)
        told = []
        for conn in self.exit_watchers:
            try:
                conn.send(line, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
                told.append(_peer_pid(conn))
            except OSError:
                pass
            conn.close()
        self.exit_watchers.clear()
        if linger > 0:
            _wait_exits([pid for pid in told if pid], self.clock.monotonic() + linger, self.clock)

    def _reply(self, conn: socket.socket, reply: bytes) -> None:
        del self.buffers[conn]
        del self.deadlines[conn]
        # A fresh deadline, the latest of all: the order of `deadlines` holds.
        self.deadlines[conn] = self.clock.monotonic() + self.timeout
        self.replies[conn] = memoryview(reply)
        self.selector.modify(conn, selectors.EVENT_WRITE, functools.partial(self.write, conn))
        self.write(conn)

    def write(self, conn: socket.socket) -> None:
        """Send what the client's socket buffer takes; the rest when it is writable again."""
        reply = self.replies.get(conn)
        if reply is None:
            return  # dropped earlier in the same turn of the loop
        try:
            sent = conn.send(reply, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EPIPE, ECONNRESET: the client went away without its reply
            self._drop(conn)
            return
        remaining = reply[sent:]
        if remaining:
            self.replies[conn] = remaining
        else:
            self._drop(conn)

    # -- deadlines -------------------------------------------------------------------

    def next_deadline(self) -> float:
        """Monotonic time of the next connection to time out, or of watching
        the listener again (inf: neither)."""
        return min(next(iter(self.deadlines.values()), math.inf), self.parked_until or math.inf)

    def expire(self, now: float) -> None:
        """Close every connection whose deadline has passed (and watch the listener again when due)."""
        if self.parked_until and now >= self.parked_until:
            self._unpark()
        while self.deadlines:
            conn, due = next(iter(self.deadlines.items()))
            if due > now:
                return
            reading = conn in self.buffers
            self._drop(conn, "control request timeout",
                       f"no complete request within {self.timeout} s" if reading else None)

    def _drop(self, conn: socket.socket, why: str | None = None, tell: str | None = None) -> None:
        """Forget and close a connection; `why` counts it as rejected, `tell`
        is said to the client if its socket takes it at once."""
        self.selector.unregister(conn)
        self.buffers.pop(conn, None)
        self.replies.pop(conn, None)
        del self.deadlines[conn]
        if why is not None:
            self.on_rejected(why)
        if tell is not None:
            try:
                conn.send(_line({"ok": False, "error": tell}), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except OSError:
                pass
        conn.close()

    def _warn(self, reason: str, detail: str) -> None:
        """One warning per WARNING_INTERVAL, with how many were shed or evicted meanwhile."""
        self.unwarned[reason] = self.unwarned.get(reason, 0) + 1
        now = self.clock.monotonic()
        if now - self.warned_at < WARNING_INTERVAL:
            return
        self.warned_at = now
        log.event(logging.WARNING, "control_overloaded", reason=reason, detail=detail,
                  since_last_warning=" ".join(f"{k}:{n}" for k, n in sorted(self.unwarned.items())),
                  max_clients=self.max_clients, held=len(self.deadlines),
                  effect="the oldest control connections are closed, newcomers refused when out of descriptors; "
                         "find the clients that hold connections open, or raise the open-files limit")
        self.unwarned.clear()

    def close(self) -> None:
        for conn in list(self.deadlines):
            self._drop(conn)


def request(path: Path, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the master and return its reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sent = False
    try:
        with unix_address(path) as address:
            sock.connect(address)
        _check_server(sock, path)  # before anything is sent: a stop must reach no impostor
        sock.sendall(json.dumps(message).encode() + b"\n")
        sent = True
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        if data and not data.endswith(b"\n"):
            # Cut off (the master exec'd, stopped or dropped the connection mid-reply): no answer, not a bad one.
            raise CutOff(f"the master's reply on {path} was cut off after {len(data)} bytes (it may be replacing "
                         "itself or stopping); ask again")
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"no master is listening on {path}") from None
    except (ConnectionResetError, BrokenPipeError):
        raise ControlError(f"the master on {path} closed the connection (it may be stopping)") from None
    except TimeoutError:
        if sent:  # in its socket's queue: a stopped master reads it once it runs again
            raise NoAnswer(path, timeout) from None
        raise ControlError(f"the master did not answer on {path} within {timeout:g} s (nothing was sent)") from None
    except PermissionError:
        raise  # another user's state directory: the CLI says whose to run as
    except OSError as exc:  # e.g. the state directory is gone: no master can be asked there
        raise ControlError(f"cannot reach a master on {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return _refused_or(path, _parse(path, bytes(data)))


def _peer_pid(conn: socket.socket) -> int:
    """The pid of the process that connected, as this process's namespace
    sees it: 0 if it is outside it (or the kernel would not say)."""
    try:
        pid, _uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return 0
    return int(pid)


def _wait_exits(pids: list[int], deadline: float, clock: Clock) -> None:
    """Until `deadline` (on `clock`) at most, wait for each of `pids` to exit
    (its pidfd turns readable). A pid gone already, or unknown, is not waited for."""
    poller = select.poll()
    pidfds = []
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        pidfds.append(pidfd)
        poller.register(pidfd, select.POLLIN)
    try:
        left = len(pidfds)
        while left and (wait := deadline - clock.monotonic()) > 0:
            for pidfd, _event in poller.poll(wait * 1000):
                poller.unregister(pidfd)
                left -= 1
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


def _check_server(sock: socket.socket, path: Path) -> None:
    """The process listening at `path` must run as this user (or root): any
    other is not our master. SO_PEERCRED names the process that called
    listen(); its pid is not compared with the pidfile's, as a fork-mode
    successor serves on the socket its predecessor listened on."""
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    if uid not in (os.geteuid(), 0):
        raise ForeignServer(f"{path} is served by a process of uid {uid}, not by a master of this user "
                           f"(uid {os.geteuid()}): nothing was sent to it. Remove that socket, or check who "
                           "wrote it into the state directory")


def reply_field(reply: dict[str, Any], name: str, kind: type[Any]) -> Any:
    """`reply[name]`, checked against `kind`: a reply of another shape is an
    error line for the operator, never a KeyError traceback."""
    value = reply.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MalformedReply(f"the master's reply has no valid {name!r} (is the control socket a Phoenix "
                             f"master's of this version?)")
    return value


class StopSent:
    """A stop the master took: its reply, and the connection on which it says
    how it ended (report_exit), read as long as the caller chooses to wait."""

    def __init__(self, path: Path, sock: socket.socket, reply: dict[str, Any], rest: bytes) -> None:
        self.path, self.sock, self.reply = path, sock, reply
        self.rest = bytearray(rest)  # what came after the reply's line (an ending sent at once)
        self.ended = not reply.get("report_exit")  # an older master reports no ending: nothing to wait for
        self.ending: dict[str, Any] | None = None

    def wait_ending(self, within: float) -> tuple[dict[str, Any] | None, bool]:
        """Wait up to `within` s (above 0) for the master's ending: (it, or
        None when the master ended without a word or reports none; whether it
        still runs after `within`). Once it ended, the same answer at once."""
        if self.ended:
            return self.ending, False
        if not 0 < within < math.inf:  # settimeout(0) would make the socket non-blocking, not a wait
            raise ValueError(f"a stop's wait must be a finite number of seconds above 0, not {within!r}")
        self.sock.settimeout(within)
        try:
            _read_line(self.sock, self.rest)
        except TimeoutError:
            return None, True
        except OSError:  # reset: it ended without a word (killed, crashed)
            self.rest.clear()
        self.ended = True
        line = bytes(self.rest).split(b"\n", 1)[0]
        self.ending = _parse(self.path, line) if line else None
        return self.ending, False

    def close(self) -> None:
        self.sock.close()


def stop(path: Path, mode: str, interrupt_after: float | None = None) -> StopSent:
    """Ask the master to stop; its reply, and its connection to wait on for
    its ending (StopSent.wait_ending). With `interrupt_after` (a drain), the
    master interrupts the jobs still running after that many seconds: it
    holds that deadline itself, and says so with `interrupt_after` (the
    seconds left) in its reply; `already_stopping` says a stop was under way
    (its jobs interrupted already). A master that does not report endings (an
    older release) has no `report_exit` in its reply; then nothing is waited for."""
    request: dict[str, Any] = {"cmd": "stop", "mode": mode, "report_exit": True}
    if interrupt_after is not None:
        request["interrupt_after"] = interrupt_after
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        return StopSent(path, sock, *_send_stop(sock, path, request))
    except BaseException:
        sock.close()  # kept open only for a stop that was taken
        raise


def _send_stop(sock: socket.socket, path: Path, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The master's reply to a stop, and what it sent after the reply's line."""
    sock.settimeout(REQUEST_TIMEOUT)
    sent = False
    try:
        with unix_address(path) as address:
            sock.connect(address)
        _check_server(sock, path)  # before anything is sent: a stop must reach no impostor
        sock.sendall(json.dumps(request).encode() + b"\n")
        sent = True
        data = bytearray()
        _read_line(sock, data)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"no master is listening on {path}") from None
    except (ConnectionResetError, BrokenPipeError):
        raise ControlError(f"the master on {path} closed the connection (it may be stopping)") from None
    except TimeoutError:
        if sent:  # in its socket's queue: a master stopped (SIGSTOP, a paused VM) obeys it once it runs again
            raise NoAnswer(path, REQUEST_TIMEOUT, "the stop") from None
        raise ControlError(f"the master did not answer on {path} within {REQUEST_TIMEOUT:g} s "
                           "(nothing was sent)") from None
    except PermissionError:
        raise
    except OSError as exc:
        raise ControlError(f"cannot reach a master on {path}: {exc.strerror or exc}") from None
    line, _newline, rest = bytes(data).partition(b"\n")
    return _refused_or(path, _parse(path, line)), rest


def _read_line(sock: socket.socket, data: bytearray) -> None:
    """Receive into `data` until it holds a whole line, or the master closes
    the connection; what follows the line stays in `data` too (a stop's ending
    may come in the same segment as its reply)."""
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk


def _parse(path: Path, data: bytes) -> dict[str, Any]:
    """A reply line as a JSON object; anything else is one error line (MalformedReply), never a traceback."""
    if not data:
        raise ControlError(f"the master on {path} hung up without a reply (it may be stopping, or out of "
                           "file descriptors: see its log)")
    try:
        reply = json.loads(data)
    except (ValueError, RecursionError):
        raise MalformedReply(f"the master's reply on {path} was not JSON: {bytes(data[:200])!r}") from None
    if not isinstance(reply, dict):
        raise MalformedReply(f"the master's reply on {path} was not a JSON object: {bytes(data[:200])!r}")
    return reply


def _refused_or(path: Path, reply: dict[str, Any]) -> dict[str, Any]:
    """The reply, unless it is a refusal: then its error, shown as text."""
    if reply.get("ok", False) is not True:
        error = reply.get("error", "the master refused the request")
        if not isinstance(error, str):
            raise MalformedReply(f"the master's refusal on {path} has no readable error: {str(reply)[:200]!r}")
        raise ControlError(visible(error, multiline=True))
    return reply


WAKE_TIMEOUT = 1.0  # a master that does not answer in time still finds the jobs on its next poll


def wake(path: Path, owed_callbacks: bool = False) -> None:
    """Ask the running master to look for pending jobs now (and, with
    `owed_callbacks`, for callbacks owed: a batch closed complete); with none
    running, the next one starts them."""
    try:
        request(path, {"cmd": "wake", "owed": True} if owed_callbacks else {"cmd": "wake"}, timeout=WAKE_TIMEOUT)
    except ControlError:
        pass
