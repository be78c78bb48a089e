"""The fork server: the parent of every job child, so that the master never
forks one.

Each fork of a large process makes its next page writes fault (copy on
write): a master that forked every child paid ~500 faults per job in its own
loop (bench/PROFILE.md). And every fork runs the at-fork hooks that the
modules in the process registered (threading's, logging's, random's): Python
code that touches, and so copies, ~150 pages in each child. The fork server
is therefore a process of its own, started (fork and exec, as subprocess
does it) as a fresh interpreter that imports only the app and the little of
Phoenix a child needs: the job children it forks inherit neither the
master's heap nor its hooks. It is single-threaded and forks each child on
request. It tells the master each child's pid (the child then waits for its
order, which the master writes directly to the child's pipe once the attempt
is committed), and forwards each child's exit status and rusage.

It imports the app itself, from the same sys.path: the master keeps its own
import for policies and callbacks. So a job child runs the code that was on
disk when its server started: at the master's start, after a replacement
(USR2), after a log reopening (USR1: its children's stderr) and when a dead
server is replaced. Deploy new code with USR2, as always.

Master and server talk over a SOCK_SEQPACKET socketpair, in small
fixed-size binary messages:

    master -> server   FORK + the read end of the child's order pipe (SCM_RIGHTS)
                       QUIT: report what has exited, then exit
    server -> master   READY (app imported) | REFUSED reason, then it exits
                       FORKED pid start_time | FORK_FAILED errno
                       EXITED pid status max_rss_kb

The order pipe goes from the master straight to the child (its read end
passes through the server once, with the request): the order is written by
the master right after its commit, with no hop through the server's loop, so
the server's scheduling is not on the spawn's path, and a server that dies
leaves every order already given intact.

A stop ends it (QUIT). Its running children are then reparented to the
master, a child subreaper, which reaps them itself. A server that dies
(SIGKILL, the OOM killer) is the same, less the statuses it had reaped and not
yet sent: the master concludes those attempts from their final messages (see
reaper.Reaper._conclude_unreported).
"""

from __future__ import annotations

import array
import errno
import gc
import importlib.util
import json
import os
import select
import signal
import socket
import struct
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from phoenix.app import load_app, resolve_target
from phoenix.child import forksafety, output
from phoenix.child import run as child
from phoenix.linux.signals import blocked_signal_fd
from phoenix.linux.title import set_title

if TYPE_CHECKING:
    import subprocess

FORK, QUIT = b"F", b"Q"
READY, REFUSED, FORKED, FORK_FAILED, EXITED = b"R", b"N", b"P", b"E", b"X"
_FORKED = struct.Struct("=iq")  # pid, start time (clock ticks since boot; -1: unknown)
_FAILED = struct.Struct("=i")  # errno
_EXITED = struct.Struct("=iiq")  # pid, wait status, max RSS (kB)
MESSAGE_BYTES = 4096  # a refusal's reason is the longest message
REPLY_TIMEOUT = 2.0  # seconds the master waits for a fork's pid before it forks the child itself
SERVER_TITLE = "phoenix: fork server"
SERVER_MAIN = "from phoenix.child.forkserver import main; main()"
# Blocked in the server: a job that signals its parent, meaning its master,
# does not take it down (nor does a signal to its process group, which is its
# own). Only its socket (EOF, QUIT) and SIGKILL end it. A child unblocks
# everything (child._leave_server).
_BLOCKED = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def refusal(thread_names: list[str], task_count: int) -> str | None:
    """Why a fork server must not be used in this process, or None.

    A process forked from a multi-threaded one has only the forking thread: a
    lock another thread held at that moment stays held for good. Forked from
    the master on each spawn, a job child would inherit such a lock only if a
    thread held it at that very spawn; forked from a server that lives on and
    runs the app's threads too, every child after would inherit it. So
    threads the app starts at import keep spawns in the master.
    `task_count` (from /proc/self/task) also sees threads that C code
    started, which `threading` does not list."""
    others = [name for name in thread_names if name != "MainThread"]
    count = max(len(others), task_count - 1)
    if count <= 0:
        return None
    named = f" ({', '.join(others)})" if others else " (started outside Python's threading module)"
    return f"the app started {count} thread(s) at import{named}"


def thread_refusal() -> str | None:
    """`refusal` for this process, now. Python's thread names only if
    `threading` is imported already: the server must not import it."""
    threading: Any = sys.modules.get("threading")
    names = [t.name for t in threading.enumerate()] if threading is not None else []
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = len(names) or 1
    return refusal(names, tasks)


# -- the server's side -------------------------------------------------------------


def main() -> NoReturn:
    """The server's whole life: `python -c SERVER_MAIN SETTINGS` (see
    ForkServer.start). Never returns."""
    code = 70
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, _BLOCKED)
        settings = json.loads(sys.argv[1])
        set_title(f"{SERVER_TITLE} of master {settings['master']}")
        sock = socket.socket(fileno=settings["fd"])  # blocking: a reply waits for room rather than being dropped
        reason = _load(settings)
        if reason is not None:
            # backslashreplace: an import error may quote a path that is not UTF-8.
            sock.send(REFUSED + reason.encode("utf-8", "backslashreplace")[: MESSAGE_BYTES - 1])
        else:
            # After the import: what Python installed at start-up and what the
            # app installed (a TERM handler, SIGCHLD ignored) would otherwise
            # be every job child's, which keep this table.
            child.reset_signal_handlers()
            output.prepare_streams()  # once here, not in each child
            gc.freeze()  # the app's objects: never scanned here or in a child, so their pages stay shared
            signal_fd = blocked_signal_fd({signal.SIGCHLD})
            sock.send(READY)
            _loop(sock, signal_fd, settings["socket_path"], Path(settings["outbox"]))
        code = 0
    except ConnectionError:
        # ECONNRESET, EPIPE: the master is gone (SIGKILLed with messages still
        # queued to it). Nobody is left to report to, and its log is no place
        # for a traceback: exit quietly, as at EOF.
        code = 0
    except BaseException:  # noqa: BLE001 - report it in the log and exit; the master forks children itself
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _load(settings: dict[str, Any]) -> str | None:
    """Import the app as the master did; why not to serve, or None."""
    sys.path[:] = settings["path"]
    sys.argv[:] = settings["argv"]  # what a job reads there is its master's command line, as before
    try:
        load_app(settings["app"])
    except BaseException as exc:  # noqa: BLE001 - an app that fails here (even sys.exit) only costs the server
        return f"the fork server could not import the app: {type(exc).__name__}: {exc}"
    forksafety.inspect()  # what each child repairs before its job (the master logged the same findings)
    if "logging" in sys.modules:
        _set_up_logging(settings)
    else:
        sys.meta_path.insert(0, _SetUpLoggingOnImport(settings))
    return thread_refusal()


def _set_up_logging(settings: dict[str, Any]) -> None:
    """A job's log records go where the master's do, formatted alike."""
    from phoenix import log

    log.setup(settings["log_level"], settings["log_format"], settings["log_file"], master_pid=settings["master"],
              stream=output.log_stream())  # in a job child: the stderr it had, not the job's output file


class _SetUpLoggingOnImport:
    """The app did not import logging, so neither does the server (its
    at-fork hook would run in every child): a job that imports it sets it up
    as the server would have, in that child only. A finder on sys.meta_path
    that only wraps the normal import of `logging`."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "logging":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_set_up(module: Any) -> None:
            exec_module(module)
            _set_up_logging(self.settings)

        spec.loader.exec_module = exec_then_set_up  # type: ignore[method-assign]
        return spec


def _loop(sock: socket.socket, signal_fd: int, socket_path: str, outbox: Path) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(signal_fd, select.POLLIN)
    server_fds = (sock.fileno(), signal_fd)
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
                    data, ancdata, flags, _addr = sock.recvmsg(MESSAGE_BYTES, ancillary,
                                                                socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if not data or data == QUIT:
                    _report_exits(sock)  # statuses reaped so far reach the master; the rest are its own
                    return  # no data: the master is gone; QUIT: it asked
                order_fd = _received_fd(ancdata)
                if order_fd is None:
                    if flags & socket.MSG_CTRUNC:  # the kernel dropped the pipe: no descriptor free here
                        sock.send(FORK_FAILED + _FAILED.pack(errno.EMFILE))  # the master backs off, as from a fork
                    continue  # else not a fork request: nothing a master sends
                try:
                    pid = os.fork()
                except OSError as exc:
                    os.close(order_fd)
                    sock.send(FORK_FAILED + _FAILED.pack(exc.errno or errno.EAGAIN))
                    continue
                if pid == 0:
                    child.run(order_fd=order_fd, resolve=resolve_target, socket_path=socket_path, outbox=outbox,
                              keep_fds=set(), server_fds=server_fds)
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

    sock: socket.socket
    process: subprocess.Popen[bytes]  # held until reaped (see reaped): it must not be waited for by subprocess
    in_flight: list[int] = field(default_factory=list)  # order pipes' write ends, in request order
    forked: list[tuple[int, int | None, int]] = field(default_factory=list)  # (pid, start time, order fd)
    failed: list[int] = field(default_factory=list)  # errno of fork requests that failed
    exited: list[tuple[int, int, int]] = field(default_factory=list)  # (pid, status, max RSS kB)
    ready: bool = False  # it imported the app and takes requests
    refused: str | None = None  # why it will not serve (then it exits)
    gone: bool = False  # EOF: it exited (or is exiting)
    stalled: bool = False  # a reply came too late (stopped, starved): not asked again until it answers

    @classmethod
    def start(cls, settings: dict[str, Any]) -> "ForkServer":
        """Start the server (OSError if the system cannot now). `settings`:
        what `main` reads (app, path, socket_path, outbox, master, log_*).

        subprocess, not posix_spawn: glibc's posix_spawn (2.36) leaves its
        internal signals (32, 33) ignored in the new program, and every job
        child would inherit that. subprocess closes every other fd, resets
        SIGPIPE and SIGXFSZ, and forks with vfork: no copy of the master."""
        try:
            import subprocess  # here: the server imports this module, and subprocess imports threading
        except ImportError as exc:  # its C module cannot be loaded now: out of descriptors or memory
            raise OSError(f"cannot start the fork server: {exc}") from exc

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # close-on-exec, as Python makes them
        try:
            with theirs:
                # The master's own interpreter flags (-O, -X, -W...), as multiprocessing passes them on.
                flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
                process = subprocess.Popen(
                    [sys.executable, *flags, "-c", SERVER_MAIN, json.dumps({**settings, "fd": theirs.fileno()})],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,  # nothing of the master's to read; a job's stdin is /dev/null too
                    process_group=0)  # a terminal's Ctrl-C is for the master: it decides what its children get
        except (OSError, subprocess.SubprocessError) as exc:
            ours.close()
            raise OSError(f"cannot start the fork server: {exc}") from exc
        ours.setblocking(False)
        return cls(ours, process)

    @property
    def pid(self) -> int:
        return self.process.pid

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
        if kind == READY:
            self.ready = True
        elif kind == REFUSED:
            self.refused = body.decode(errors="replace")
        elif kind == EXITED:
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
        running children are the master's own from then on. One still
        importing the app has no children, and would not read QUIT until
        its import ends: it is killed."""
        if not self.ready and not self.gone:
            os.kill(self.pid, signal.SIGKILL)  # our unreaped child: the pid names it
            self._lost()
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
            self.reaped(os.waitpid(self.pid, 0)[1])
        except ChildProcessError:  # the reaper took it first (it died on its own)
            if self.process.returncode is None:
                self.process.returncode = -1  # never for subprocess to wait for
        self.close()

    def reaped(self, status: int) -> None:
        """The master reaped it (wait4 is the master's, for every child): its
        Popen must never wait, nor, dropped, leave it to subprocess's own
        clean-up, which could reap a later process with the same pid."""
        self.process.returncode = os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        self._lost()
        self.sock.close()
