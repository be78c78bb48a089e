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
outage.py's and storage.Storage.rebuild_state_dir's concern.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Callable, Protocol, Sized

from phoenix import log
from phoenix.linux import pidfile
from phoenix.linux.clock import Clock
from phoenix.linux.paths import StatePaths
from phoenix.linux.pidfile import AlreadyRunning, PidFile
from phoenix.linux.sockets import bind_heartbeat
from phoenix.rules.shortage import SHORTAGE_ERRNOS
from phoenix.store.outage import file_identity
from phoenix.wire import control
from phoenix.wire.control import ControlServer


class Listener(Protocol):
    """The heartbeat intake (heartbeats.HeartbeatIntake): the listening socket it accepts on."""

    listener: socket.socket | None

    def listen(self, sock: socket.socket) -> None: ...
    def give_grace(self, now: float) -> None: ...


Identity = tuple[int, int] | None


class StateFiles:
    def __init__(self, paths: StatePaths, attempts: Sized, intake: Listener, control: ControlServer,
                 lock: PidFile, in_fork_handover: Callable[[], bool], check_now: Callable[[], None],
                 clock: Clock) -> None:
        """`check_now()`: run the master's state-directory check at once (the
        journal's file first: if the whole directory went, it is rebuilt)."""
        self.paths = paths
        self.attempts = attempts
        self.intake = intake
        self.control = control
        self.lock = lock
        self.in_fork_handover = in_fork_handover
        self.check_now = check_now
        self.clock = clock
        # name -> (the socket we hold, the identity its path had when we first saw it)
        self.bound: dict[str, tuple[socket.socket, Identity]] = {}
        self.failing: set[str] = set()  # what could not be made again: logged once, retried each check

    def check(self) -> None:
        """Put back whatever was removed or replaced; called once a second."""
        if self.in_fork_handover():
            return  # the successor shares the sockets and writes the pidfile now
        self._socket("heartbeat", self.paths.heartbeat_socket, self._heartbeat, self.rebind_heartbeat)
        self._socket("control", self.paths.control_socket, lambda: self.control.sock,
                     lambda: self.control.rebind(control.bind(self.paths.control_socket)))
        self._lock_and_pidfile()

    def _heartbeat(self) -> socket.socket:
        listener = self.intake.listener
        assert listener is not None  # listening from open() on
        return listener

    def heartbeat_restored(self) -> bool:
        """Run the state-directory check now; True if it rebound the heartbeat
        socket. Asked before any heartbeat_timeout kill: a child started after
        the path (or the whole directory) went cannot have beaten, and must not
        be killed for it while the next once-a-second check is still to come."""
        before = self.intake.listener
        self.check_now()
        return self.intake.listener is not before

    def rebind_heartbeat(self) -> None:
        """A new listening socket at the path. Children already connected keep
        their connections; one that tried to connect while the path was
        missing could not beat: every child gets a fresh heartbeat_timeout."""
        self.intake.listen(bind_heartbeat(self.paths.heartbeat_socket))
        self.intake.give_grace(self.clock.monotonic())

    def _socket(self, name: str, path: Path, current: Callable[[], socket.socket],
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
                  running=len(self.attempts))
        return True

    def _lock_and_pidfile(self) -> None:
        lock = self.lock
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

