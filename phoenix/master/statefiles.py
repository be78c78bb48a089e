"""The state directory's files besides the journal, put back when something
removes or replaces one under a running master (a cleanup script, a
tmpfiles.d rule, a hand with `rm`).

Without them the master runs on unseen: a new child cannot find the
heartbeat socket and is killed for the silence, the CLI cannot find the
control socket (status says "stopped", stop cannot reach the master), and
without the pidfile `kill -USR2 $(cat ...)` has no pid; without the lock file
a second master could start beside this one. Once a second (the master's
state-directory check) each path's identity (device, inode) is compared with
what the master holds, and what differs is made again. The journal itself is
outage.py's and Master.rebuild_state_dir's concern.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Callable, Protocol

from phoenix import log
from phoenix.linux import pidfile
from phoenix.linux.clock import SYSTEM, Clock
from phoenix.linux.paths import StatePaths
from phoenix.linux.pidfile import AlreadyRunning, PidFile
from phoenix.linux.sockets import bind_heartbeat
from phoenix.master.attempts import AttemptTable
from phoenix.rules.shortage import SHORTAGE_ERRNOS
from phoenix.store.outage import file_identity
from phoenix.wire import control
from phoenix.wire.control import ControlServer


class StateFilesHost(Protocol):
    """What the check needs of the master: the files it holds, and a way to
    rebind the heartbeat socket and give its children grace."""

    paths: StatePaths
    heartbeat: socket.socket
    control: ControlServer
    pidfile: PidFile
    children: AttemptTable
    next_state_dir_check: float

    def in_fork_handover(self) -> bool: ...
    def watch_storage(self) -> None: ...
    def take_heartbeat_listener(self, sock: socket.socket) -> None: ...
    def give_all_grace(self, now: float) -> None: ...

Identity = tuple[int, int] | None


class StateFiles:
    def __init__(self, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        # name -> (the socket we hold, the identity its path had when we first saw it)
        self.bound: dict[str, tuple[socket.socket, Identity]] = {}
        self.failing: set[str] = set()  # what could not be made again: logged once, retried each check

    def check(self, m: StateFilesHost) -> None:
        """Put back whatever was removed or replaced; called once a second."""
        if m.in_fork_handover():
            return  # the successor shares the sockets and writes the pidfile now
        self._socket(m, "heartbeat", m.paths.heartbeat_socket, lambda: m.heartbeat,
                     lambda: self.rebind_heartbeat(m))
        self._socket(m, "control", m.paths.control_socket, lambda: m.control.sock,
                     lambda: m.control.rebind(control.bind(m.paths.control_socket)))
        self._lock_and_pidfile(m)

    def heartbeat_restored(self, m: StateFilesHost) -> bool:
        """Run the state-directory check now; True if it rebound the heartbeat
        socket. Asked before any heartbeat_timeout kill: a child started after
        the path (or the whole directory) went cannot have beaten, and must not
        be killed for it while the next once-a-second check is still to come."""
        before = m.heartbeat
        m.next_state_dir_check = 0.0
        m.watch_storage()
        return m.heartbeat is not before

    def rebind_heartbeat(self, m: StateFilesHost) -> None:
        """A new listening socket at the path. Children already connected keep
        their connections; one that tried to connect while the path was
        missing could not beat: every child gets a fresh heartbeat_timeout."""
        m.take_heartbeat_listener(bind_heartbeat(m.paths.heartbeat_socket))
        m.give_all_grace(self.clock.monotonic())

    def _socket(self, m: StateFilesHost, name: str, path: Path, current: Callable[[], socket.socket],
                rebind: Callable[[], None]) -> bool:
        sock = current()
        held, identity = self.bound.get(name, (None, None))
        if held is not sock:  # bound (or inherited, or rebuilt) since the last check: its file is the one there now
            identity = file_identity(path)
            self.bound[name] = (sock, identity)
        now = file_identity(path)
        if identity is not None and now == identity:
            return False
        try:
            rebind()
        except OSError as exc:
            self._failed(name, path, exc)
            return False
        self.failing.discard(name)
        self.bound[name] = (current(), file_identity(path))
        log.event(logging.WARNING, "socket_rebuilt", path=path, found="missing" if now is None else "another file",
                  running=len(m.children))
        return True

    def _lock_and_pidfile(self, m: StateFilesHost) -> None:
        lock = m.pidfile
        try:
            if lock.lock_fd is not None and _fd_identity(lock.lock_fd) != file_identity(lock.lockfile):
                # Another master could take a new lock file there: take it first.
                lock.rebuild()
                log.event(logging.WARNING, "lockfile_rebuilt", path=lock.lockfile)
            if pidfile.read_pid(lock.pidfile) != os.getpid():
                pidfile.write_atomically(lock.pidfile, os.getpid())
                log.event(logging.WARNING, "pidfile_rebuilt", path=lock.pidfile, pid=os.getpid())
        except (OSError, AlreadyRunning) as exc:
            if isinstance(exc, OSError) and exc.errno in SHORTAGE_ERRNOS:
                return  # out of descriptors to read it: nothing known to be wrong, looked at again next second
            self._failed("pidfile", lock.pidfile, exc)
            return
        self.failing.discard("pidfile")

    def _failed(self, name: str, path: Path, exc: BaseException) -> None:
        if name not in self.failing:
            self.failing.add(name)
            log.event(logging.ERROR, "state_file_rebuild_failed", path=path, error=str(exc),
                      effect="retrying every second")


def _fd_identity(fd: int) -> Identity:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino

