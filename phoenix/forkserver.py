"""The fork server: the parent of every job child, so that the master never
forks one.

Each fork of a large process makes its next page writes fault (copy on
write): a master that forked every child paid ~500 faults per job in its own
loop (bench/PROFILE.md). The fork server is forked once by the master, right
after the app is imported and before the master's heap grows or any thread of
the master starts; it is single-threaded, touches little memory, and forks
each child on request. It tells the master each child's pid (the child then
waits for its order, which the master writes directly to the child's pipe once
the attempt is committed), and forwards each child's exit status and rusage.

Master and server talk over a SOCK_SEQPACKET socketpair (close-on-exec), in
small fixed-size binary messages:

    master -> server   FORK + the read end of the child's order pipe (SCM_RIGHTS)
                       QUIT: report what has exited, then exit
    server -> master   FORKED pid start_time | FORK_FAILED errno
                       EXITED pid status max_rss_kb

The order pipe goes from the master straight to the child (its read end
passes through the server once, with the request): the order is written by
the master right after its commit, with no hop through the server's loop, so
the server's scheduling is not on the spawn's path, and a server that dies
leaves every order already given intact.

The server runs the code the master had when it started it: a replacement
(USR2), a log reopening (USR1, the children's stderr) and a stop end it
(QUIT). Its running children are then reparented to the master, a child
subreaper, which reaps them itself. A server that dies (SIGKILL, the OOM
killer) is the same, less the statuses it had reaped and not yet sent: the
master concludes those attempts from their final messages (see
reaper.Reaper._conclude_unreported).
"""

from __future__ import annotations

import array
import errno
import gc
import os
import select
import signal
import socket
import struct
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable, NoReturn

from setproctitle import setproctitle

from phoenix import child
from phoenix.signals import blocked_signal_fd

FORK, QUIT = b"F", b"Q"
FORKED, FORK_FAILED, EXITED = b"P", b"E", b"X"
_FORKED = struct.Struct("=iq")  # pid, start time (clock ticks since boot; -1: unknown)
_FAILED = struct.Struct("=i")  # errno
_EXITED = struct.Struct("=iiq")  # pid, wait status, max RSS (kB)
MESSAGE_BYTES = 64
REPLY_TIMEOUT = 2.0  # seconds the master waits for a fork's pid before it forks the child itself
SERVER_TITLE = "phoenix: fork server"


def refusal(thread_names: list[str], task_count: int) -> str | None:
    """Why a fork server must not be used in this process, or None.

    A process forked from a multi-threaded one has only the forking thread: a
    lock another thread held at that moment stays held for good. Forked from
    the master on each spawn, a job child would inherit such a lock only if a
    thread held it at that very spawn; forked once into a server that lives
    on, every child after would inherit it. And the app's threads go on
    working in the master (refreshing a cache, a connection pool), never in a
    server. So threads the app started at import keep spawns in the master.
    `task_count` (from /proc/self/task) also sees threads that C code
    started, which `threading` does not list."""
    others = [name for name in thread_names if name != "MainThread"]
    count = max(len(others), task_count - 1)
    if count <= 0:
        return None
    named = f" ({', '.join(others)})" if others else " (started outside Python's threading module)"
    return f"the app started {count} thread(s) at import{named}"


def thread_refusal() -> str | None:
    """`refusal` for this process, now."""
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = threading.active_count()
    return refusal([t.name for t in threading.enumerate()], tasks)


# -- the server's side -------------------------------------------------------------


def serve(sock_fd: int, keep_fds: set[int], child_main: Callable[[int, tuple[int, ...]], NoReturn]) -> NoReturn:
    """The server's whole life after the master forked it. Never returns.

    `child_main(order_fd, server_fds)` runs in each forked child."""
    code = 70
    try:
        _become_server(sock_fd, keep_fds)
        signal_fd = blocked_signal_fd({signal.SIGCHLD})
        _loop(sock_fd, signal_fd, child_main)
        code = 0
    except BaseException:  # noqa: BLE001 - never unwind into the master's code
        traceback.print_exc()
    finally:
        os._exit(code)


def _become_server(sock_fd: int, keep_fds: set[int]) -> None:
    """Once for the server's life, the resets each child would otherwise do:
    the master's signal handlers, mask and fds go."""
    os.setpgid(0, 0)  # a terminal's Ctrl-C is for the master: it decides what its children get
    child.reset_signal_handlers()
    # Blocked, not ignored (a child inherits what is ignored, and unblocks
    # everything with the one sigmask call it makes anyway): a job that
    # signals its parent, meaning its master, does not take the server down.
    # Only its socket (EOF, QUIT) and SIGKILL end it.
    signal.pthread_sigmask(signal.SIG_SETMASK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
    low = 3
    for fd in sorted(fd for fd in keep_fds | {sock_fd} if fd >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
    gc.freeze()  # what the master made so far: never scanned here or in a child, so its pages stay shared
    setproctitle(f"{SERVER_TITLE} of master {os.getppid()}")


def _loop(sock_fd: int, signal_fd: int, child_main: Callable[[int, tuple[int, ...]], NoReturn]) -> None:
    sock = socket.socket(fileno=sock_fd)  # blocking: a reply waits for room rather than being dropped
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    poller.register(signal_fd, select.POLLIN)
    server_fds = (sock_fd, signal_fd)
    fds = array.array("i")
    ancillary = socket.CMSG_SPACE(fds.itemsize)
    while True:
        for fd, _mask in poller.poll():
            if fd == signal_fd:
                _drain(signal_fd)
                _report_exits(sock)
                continue
            while True:
                try:
                    data, ancdata, _flags, _addr = sock.recvmsg(MESSAGE_BYTES, ancillary,
                                                                 socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if not data or data == QUIT:
                    _report_exits(sock)  # statuses reaped so far reach the master; the rest are its own
                    return  # no data: the master is gone; QUIT: it asked
                order_fd = _received_fd(ancdata)
                if order_fd is None:
                    continue  # not a fork request: nothing a master sends
                try:
                    pid = os.fork()
                except OSError as exc:
                    os.close(order_fd)
                    sock.send(FORK_FAILED + _FAILED.pack(exc.errno or errno.EAGAIN))
                    continue
                if pid == 0:
                    child_main(order_fd, server_fds)
                os.close(order_fd)
                try:
                    os.setpgid(pid, pid)  # before the master hears of it: a kill right away reaches the group
                except OSError:
                    pass  # the child did it first, or is gone already
                sock.send(FORKED + _FORKED.pack(pid, _start_time(pid)))


def _received_fd(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
            for extra in received[1:]:
                os.close(extra)
            return received[0] if received else None
    return None


def _start_time(pid: int) -> int:
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return -1
    finally:
        os.close(fd)
    return int(raw[raw.rindex(b")") + 2 :].split()[19])


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _report_exits(sock: socket.socket) -> None:
    while True:
        try:
            pid, status, rusage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        try:
            sock.send(EXITED + _EXITED.pack(pid, status, rusage.ru_maxrss))
        except OSError:
            return  # the master is gone


# -- the master's side -------------------------------------------------------------


@dataclass
class ForkServer:
    """The master's handle on its fork server."""

    pid: int
    sock: socket.socket
    in_flight: list[int] = field(default_factory=list)  # order pipes' write ends, in request order
    forked: list[tuple[int, int | None, int]] = field(default_factory=list)  # (pid, start time, order fd)
    failed: list[int] = field(default_factory=list)  # errno of fork requests that failed
    exited: list[tuple[int, int, int]] = field(default_factory=list)  # (pid, status, max RSS kB)
    gone: bool = False  # EOF: it exited (or is exiting)
    stalled: bool = False  # a reply came too late (stopped, starved): not asked again until it answers

    @classmethod
    def start(cls, keep_fds: set[int], child_main: Callable[[int, tuple[int, ...]], NoReturn]) -> "ForkServer":
        """Fork the server (OSError if the system cannot fork now)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # close-on-exec, as Python makes them
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            serve(theirs.fileno(), keep_fds, child_main)
        theirs.close()
        ours.setblocking(False)
        return cls(pid, ours)

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self) -> None:
        """Ask for one more waiting child; its pid comes back in `forked`."""
        order_read, order_write = os.pipe2(os.O_CLOEXEC)
        try:
            self.sock.sendmsg([FORK], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [order_read]))])
        except OSError:
            os.close(order_write)
            raise
        finally:
            os.close(order_read)  # the server holds its own copy now (or never will)
        self.in_flight.append(order_write)

    def read(self) -> None:
        """Every message waiting (never blocks)."""
        while True:
            try:
                data = self.sock.recv(MESSAGE_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            self._take(data)
            if self.gone:
                return

    def _take(self, data: bytes) -> None:
        if not data:
            self._lost()
            return
        self.stalled = False
        kind, body = data[:1], data[1:]
        if kind == EXITED:
            self.exited.append(_EXITED.unpack(body))
        elif kind == FORKED and self.in_flight:
            pid, start = _FORKED.unpack(body)
            self.forked.append((pid, start if start >= 0 else None, self.in_flight.pop(0)))
        elif kind == FORK_FAILED and self.in_flight:
            os.close(self.in_flight.pop(0))
            self.failed.append(_FAILED.unpack(body)[0])

    def wait(self, timeout: float = REPLY_TIMEOUT) -> None:
        """Block until a reply to the oldest request (or the server's end) arrives."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        replies = len(self.forked) + len(self.failed)
        while self.in_flight and not self.gone and len(self.forked) + len(self.failed) == replies:
            if not poller.poll(timeout * 1000):
                self.stalled = True
                raise TimeoutError(f"the fork server (pid {self.pid}) did not answer within {timeout} s")
            self.read()

    def _lost(self) -> None:
        if not self.gone:
            self.gone = True
            for fd in self.in_flight:  # requests it never answered: no child waits on them
                os.close(fd)
            self.in_flight.clear()

    def stop(self) -> None:
        """Ask it to exit, take every exit it reports, and reap it: its
        running children are the master's own from then on."""
        if not self.gone:
            try:
                self.sock.send(QUIT)
            except OSError:
                pass
            self.sock.settimeout(REPLY_TIMEOUT)
            try:
                while not self.gone:
                    self._take(self.sock.recv(MESSAGE_BYTES))
            except TimeoutError:
                os.kill(self.pid, signal.SIGKILL)  # our unreaped child: the pid names it
                self._lost()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass  # the reaper took it first (it died on its own)
        self.close()

    def close(self) -> None:
        self._lost()
        self.sock.close()
