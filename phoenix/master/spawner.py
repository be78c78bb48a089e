"""Starting children: through the fork server, and the spare child kept
ready ahead of need.

Every child starts blank: forked, detached from the master, waiting on a
pipe for its order (phoenix.child.run). The master writes the order only
after recording the child's pid, so a new master never runs a job again
beside a child it does not know. Because a child does not need its job at
fork time, one is kept forked in advance (the spare): a job that finds a
free slot starts at once instead of waiting for a fork.

Children are forked by the fork server (forkserver.py), so that the master's
own pages are never shared copy-on-write with a child. Without one (the app
started threads at import, or the server is being restarted) the master
forks them itself, as before.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable

from phoenix import log
from phoenix.child import forksafety
from phoenix.child import run as child
from phoenix.child.forkserver import ForkServer, thread_refusal
from phoenix.config import Config
from phoenix.linux import procfs
from phoenix.linux.paths import StatePaths
from phoenix.master.loop import Loop
from phoenix.master.specs import JobSpecs
from phoenix.rules.outcomes import classify_exit
from phoenix.rules.shortage import SHORTAGE_ERRNOS

SPARE_RETRY_DELAY = 1.0  # seconds without a spare after one died while waiting
# Children the fork server keeps forked ahead (no more than the slots): two
# jobs that end together both start at once, without the master waiting for
# a fork (measured: ~13 % more no-op jobs per second than with one).
SPARES = 2
SERVER_RETRY_DELAY = 1.0  # seconds between two starts of the fork server
# Fork requests kept in flight while the scheduler starts a burst of jobs:
# the server forks the next children while the master records the last one's
# attempt. One request at a time made each start a serial round trip of
# wake-ups (master -> server -> master), each of which waits behind every
# runnable process: with thousands of children beating, the spawn rate fell
# as the children grew (issue 22: ~200/s at first, ~20/s near 10,000).
FORKS_AHEAD = 16


@dataclass(slots=True)
class WaitingChild:
    """A forked child that has no job yet."""

    pid: int
    start_time: int | None  # with the pid, names this process for good (see procfs)
    order_fd: int  # the master's end of the pipe the child waits on
    own: bool = True  # the master's child (else the fork server's, which reports its exit)

    def send(self, order: bytes) -> bool:
        """Hand over the job; False if the child cannot have received it (it
        died while waiting: EPIPE). The pipe is closed afterwards either way."""
        try:
            view = memoryview(order)
            while view:
                view = view[os.write(self.order_fd, view):]
            return True
        except OSError:
            return False
        finally:
            os.close(self.order_fd)


class Spawner:
    def __init__(self, app_spec: str | None, config: Callable[[], Config], paths: StatePaths, specs: JobSpecs,
                 loop: Loop, slots: Callable[[], int], wants_spare: Callable[[], bool]) -> None:
        """`app_spec`: the app's module:attribute (None: an app object, which
        no fork server can import). `wants_spare()`: the master will be
        starting jobs (a spare is worth forking)."""
        self.app_spec = app_spec
        self.config = config
        self.paths = paths
        self.specs = specs
        self.loop = loop
        self.clock = loop.clock
        self.slots = slots
        self.wants_spare = wants_spare
        self.ready: list[WaitingChild] = []  # forked, waiting for an order: the spares
        self.not_before = 0.0  # monotonic: no new spare until then, after one died waiting
        self.server: ForkServer | None = None
        self.server_off: str | None = None  # why the master forks its children itself, for good
        self.server_not_before = 0.0  # monotonic: no new server until then
        self.server_start_error: str | None = None  # why the last start of a server failed (logged once)
        self.server_lost = False  # a server died: some exits it reaped may never have been reported
        self.exited: list[tuple[int, int, int]] = []  # (pid, status, max RSS kB) reported by the server

    def take_reports(self) -> list[tuple[int, int, int]]:
        """The exits (pid, status, max RSS kB) the fork server reported since the last call."""
        reports, self.exited = self.exited, []
        return reports

    def take_server_lost(self) -> bool:
        """True once after a fork server died: some exits it reaped may never have been reported."""
        lost, self.server_lost = self.server_lost, False
        return lost

    @property
    def spare(self) -> WaitingChild | None:
        """The spare the next job gets."""
        return self.ready[0] if self.ready else None

    # -- the fork server ------------------------------------------------------------

    def check_app_threads(self) -> None:
        """At start-up, once the app is imported and before the master's own
        threads start: an app that started threads keeps spawns in the master
        (the server would import the app, and start them too). The server
        itself starts with the first job or the first spare, after the master
        is ready: its start-up is not part of a replacement's blind window.
        Then what else the import left that a child would inherit broken
        (forksafety): one line each."""
        if self.app_spec is None:
            # phoenix.HeartbeatParent: an App object, maybe in __main__, that no other interpreter can import.
            self._turn_server_off("the app was given as an object, not as module:attribute", level=logging.INFO)
        else:
            refusal = thread_refusal()
            if refusal is not None:
                self._turn_server_off(refusal, why="a lock one of those threads held when a child was forked "
                                                    "would stay held in that child for good")
        # What the app's import left that a forked child would inherit broken
        # (the fork server finds the same in its own import).
        for what, effect in forksafety.inspect().notices():
            log.event(logging.WARNING, "fork_unsafe_app", what=what, effect=effect)

    def _start_server_if_due(self) -> None:
        """At start-up, or after it died or was replaced."""
        if self.server is None and self.server_off is None and self.clock.monotonic() >= self.server_not_before:
            self._start_server()

    def _turn_server_off(self, reason: str, why: str | None = None, level: int = logging.WARNING) -> None:
        self.server_off = reason
        effect = "job children are forked from the master (slower per job)"
        log.event(level, "fork_server_off", reason=reason, effect=f"{effect}: {why}" if why else effect)

    def _start_server(self) -> None:
        config = self.config()
        self.server_not_before = self.clock.monotonic() + SERVER_RETRY_DELAY
        settings = {"app": self.app_spec, "path": [os.fspath(entry) for entry in sys.path], "argv": sys.argv,
                    "master": os.getpid(),
                    "socket_path": str(self.paths.heartbeat_socket), "outbox": str(self.paths.outbox),
                    "log_level": config.log_level, "log_format": config.log_format, "log_file": config.log_file}
        try:
            server = ForkServer.start(settings)
        except OSError as exc:
            error = exc.strerror or str(exc)
            if error != self.server_start_error:  # tried again every second: said once per cause
                self.server_start_error = error
                log.event(logging.ERROR, "fork_server_failed", error=error,
                          effect=f"the master forks children; it tries again every {SERVER_RETRY_DELAY:g}s")
            return
        self.server_start_error = None
        self.server = server
        self.loop.subprocesses[server.pid] = functools.partial(self._server_exited, server)
        self.loop.watch(server, self._read_server)
        log.event(logging.INFO, "fork_server", pid=server.pid)

    def _server_usable(self) -> ForkServer | None:
        server = self.server
        usable = server is not None and server.ready and not server.gone and not server.stalled
        return server if usable else None

    def _server_starting(self) -> ForkServer | None:
        """The server, while it imports the app: spares are worth waiting for
        from it rather than forked by the master (a fork the master's pages
        pay for); a job that comes meanwhile does not wait (the master's loop
        would stop for as long as the app's import takes)."""
        server = self.server  # (only a ready server is ever asked, so only a ready one can be stalled)
        starting = server is not None and not server.ready and server.refused is None and not server.gone
        return server if starting else None

    def _read_server(self) -> None:
        server = self.server
        if server is None:
            return
        server.read()
        self._collect(server)
        if server.gone:
            self.loop.unwatch(server)  # its exit comes through wait4 (_server_exited)

    def _collect(self, server: ForkServer) -> None:
        """Move what the server reported into the spawner's own lists."""
        if server.refused is not None and self.server_off is None:
            self._turn_server_off(server.refused)  # it exits on its own: _server_exited reaps it
        self.exited += server.exited
        server.exited.clear()
        for pid, start_time, order_fd in server.forked:
            waiting = WaitingChild(pid, start_time, order_fd, own=False)
            self.ready.append(waiting)
            self.loop.subprocesses[pid] = functools.partial(self._spare_exited, pid)
        server.forked.clear()

    def _server_exited(self, server: ForkServer, status: int) -> None:
        """Reaped by the master (wait4): the server died (a stop reaps it in
        stop_server, never here). Its children are the master's now."""
        server.reaped(status)
        if self.server is not server:
            return
        server.read()  # what it sent before it died
        self._collect(server)
        server.close()
        try:
            self.loop.unwatch(server)
        except (KeyError, ValueError):
            pass  # unregistered at EOF
        self.server = None
        if server.refused is not None:
            return  # it never forked a child: the master forks them, as logged
        if not server.ready:
            # Its import of the app crashed the interpreter (the master's did
            # not): starting it again would only crash again, once a second.
            self._turn_server_off(f"the fork server died while importing the app ({classify_exit(status)[1]})")
            return
        self.server_lost = True
        # Ready children it forked are the master's now: wait4 reports them.
        for waiting in self.ready:
            waiting.own = True
        log.event(logging.WARNING, "fork_server_died", pid=server.pid, how=classify_exit(status)[1],
                  effect="its children are the master's now; a new fork server is started")

    def stop_server(self) -> None:
        """End the server (it runs this image's code, and holds the log's old
        fds): exits it already reaped are reported, its running children
        become the master's own."""
        server, self.server = self.server, None
        if server is None:
            return
        self.loop.subprocesses.pop(server.pid, None)
        if not server.gone:
            self.loop.unwatch(server)
        server.stop()
        self._collect(server)
        self.server_lost = True  # had it died just before, an exit it reaped may be unreported: the reaper checks
        for waiting in self.ready:
            waiting.own = True

    # -- children -------------------------------------------------------------------

    def fork(self) -> WaitingChild:
        """A new waiting child forked by the master itself (OSError if the system cannot fork now)."""
        # Everything the child is given is computed here: after fork it must
        # not run any master code outside child.run's own guard.
        keep = log.stream_fds()
        socket_path, outbox, resolve = str(self.paths.heartbeat_socket), self.paths.outbox, self.specs.spec_for
        order_read, order_write = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError:
            os.close(order_read)
            os.close(order_write)
            raise
        if pid == 0:
            child.run(order_fd=order_read, resolve=resolve, socket_path=socket_path, outbox=outbox, keep_fds=keep)
        os.close(order_read)
        try:
            os.setpgid(pid, pid)  # also here, so a kill right after fork reaches the group
        except OSError:
            pass  # the child did it first
        try:
            start_time = procfs.start_time(pid)
        except OSError:
            # Out of descriptors or memory for /proc: a child whose start time is
            # unknown could later be mistaken for another process with its pid.
            # It gets no order (EOF: it exits unrun, reaped as a stranger), and
            # the caller backs off as from a failed fork.
            os.close(order_write)
            raise
        return WaitingChild(pid, start_time, order_write)

    def take(self, ahead: int = 0) -> WaitingChild:
        """The spare child if there is one, else a freshly forked one.
        `ahead`: how many more the caller means to take right after this
        one (a burst of pending jobs): up to FORKS_AHEAD of them are asked
        of the fork server now, so that it forks while the master records."""
        if not self.ready:
            self._start_server_if_due()  # while it imports the app, this child comes from the master
        server = self._server_usable()
        if server is not None and ahead:
            self._request_ahead(server, min(1 + ahead, FORKS_AHEAD))
        if not self.ready and server is not None:
            try:
                if not server.in_flight:
                    server.request()
                server.wait()
            except OSError as exc:
                if exc.errno in SHORTAGE_ERRNOS:
                    raise  # no descriptor for the order pipe: the master's shortage, the caller backs off
                # TimeoutError included: this one child comes from the master
                log.event(logging.WARNING, "fork_server_slow", pid=server.pid, error=str(exc))
            self._collect(server)
            if not self.ready and server.failed:
                error = server.failed.pop(0)
                raise OSError(error, os.strerror(error))
        if not self.ready:
            return self.fork()
        waiting = self.ready.pop(0)
        del self.loop.subprocesses[waiting.pid]  # from now on it is a job's child, reaped as such
        return waiting

    def _request_ahead(self, server: ForkServer, wanted: int) -> None:
        """Children forked or asked for, up to `wanted`; short of descriptors, fewer (take() asks for its own)."""
        while len(self.ready) + len(server.in_flight) < wanted:
            try:
                server.request()
            except OSError:
                return

    def give_back(self, waiting: WaitingChild) -> None:
        """A child taken for a job that did not come (a shared store had none
        due): it waits again as a spare, first in line."""
        self.ready.insert(0, waiting)
        self.loop.subprocesses[waiting.pid] = functools.partial(self._spare_exited, waiting.pid)

    def replenish(self) -> None:
        """Keep the fork server and the next spare child coming, if the master will be starting jobs."""
        if not self.wants_spare():
            return
        self._start_server_if_due()
        if self.clock.monotonic() < self.not_before or self._server_starting() is not None:
            return  # a server that is starting forks the spares once it is ready
        server = self._server_usable()
        if server is not None:
            if server.failed:  # spares it could not fork (out of processes or memory): not asked again at once
                server.failed.clear()
                self.not_before = self.clock.monotonic() + SPARE_RETRY_DELAY
                return
            while len(self.ready) + len(server.in_flight) < max(1, min(SPARES, self.slots())):
                try:
                    server.request()
                except OSError:  # out of descriptors: no spare for now, and no new try on every turn
                    self.not_before = self.clock.monotonic() + SPARE_RETRY_DELAY
                    break
            return
        if self.ready:
            return  # forked by the master: one spare, as its forks cost the master itself
        try:
            spare = self.fork()
        except OSError:  # no spare for now: a job forks its own child (and the scheduler backs off if it cannot)
            self.not_before = self.clock.monotonic() + SPARE_RETRY_DELAY
            return
        self.ready.append(spare)
        self.loop.subprocesses[spare.pid] = functools.partial(self._spare_exited, spare.pid)

    def _spare_exited(self, pid: int, status: int) -> None:
        waiting = next((w for w in self.ready if w.pid == pid), None)
        if waiting is None:
            return
        # Killed from outside while waiting (the OOM killer, an operator): wait
        # a little before the next, so a spare that keeps dying is no fork loop.
        os.close(waiting.order_fd)
        self.ready.remove(waiting)
        self.not_before = self.clock.monotonic() + SPARE_RETRY_DELAY
        log.event(logging.WARNING, "spare_died", pid=pid, how=classify_exit(status)[1],
                  retry_in=f"{SPARE_RETRY_DELAY}s")

    def discard(self) -> None:
        """End the spare child and the fork server: before an exec or a
        handover (they run the old code and hold the old settings), when the
        logs are reopened, and when stopping. Exits the server reported on
        its way out are in `exited`, for the reaper."""
        ready, self.ready = self.ready, []
        for waiting in ready:
            self.loop.subprocesses.pop(waiting.pid, None)
            os.close(waiting.order_fd)  # EOF: it exits without running anything
            if waiting.own:
                os.kill(waiting.pid, signal.SIGKILL)  # our unreaped child: the pid cannot name another process
                os.waitpid(waiting.pid, 0)
        self.stop_server()
