"""Forking children, and the spare child kept ready ahead of need.

Every child starts blank: forked, detached from the master, waiting on a
pipe for its order (phoenix.child.run). The master writes the order only
after recording the child's pid, so a new master never runs a job again
beside a child it does not know. Because a child does not need its job at
fork time, the master keeps one such child forked in advance: a job that
finds a free slot starts at once instead of waiting for a fork, which costs
milliseconds for a master of tens of MB (see bench/PROFILE.md).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from phoenix import child, log, procfs
from phoenix.app import JobSpec
from phoenix.outcomes import classify_exit
from phoenix.paths import StatePaths


class SpawnerHost(Protocol):
    paths: StatePaths
    subprocesses: dict[int, Callable[[int], None]]  # pid -> on_exit(status)

    def spec_for(self, target: str) -> JobSpec: ...
    def wants_spare(self) -> bool: ...  # the master will be starting jobs

SPARE_RETRY_DELAY = 1.0  # seconds without a spare after one died while waiting


@dataclass(slots=True)
class WaitingChild:
    """A forked child that has no job yet."""

    pid: int
    start_time: int | None  # with the pid, names this process for good (see procfs)
    order_fd: int  # the master's end of the pipe the child waits on

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
    def __init__(self, master: SpawnerHost) -> None:
        self.master = master
        self.spare: WaitingChild | None = None
        self.not_before = 0.0  # monotonic: no new spare until then, after one died waiting

    def fork(self) -> WaitingChild:
        """A new waiting child (OSError if the system cannot fork now)."""
        m = self.master
        # Everything the child is given is computed here: after fork it must
        # not run any master code outside child.run's own guard.
        keep = log.stream_fds()
        socket_path, outbox = str(m.paths.heartbeat_socket), m.paths.outbox
        order_read, order_write = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError:
            os.close(order_read)
            os.close(order_write)
            raise
        if pid == 0:
            child.run(order_fd=order_read, resolve=m.spec_for, socket_path=socket_path, outbox=outbox, keep_fds=keep)
        os.close(order_read)
        try:
            os.setpgid(pid, pid)  # also here, so a kill right after fork reaches the group
        except OSError:
            pass  # the child did it first
        return WaitingChild(pid, procfs.start_time(pid), order_write)

    def take(self) -> WaitingChild:
        """The spare child if there is one, else a freshly forked one."""
        spare, self.spare = self.spare, None
        if spare is None:
            return self.fork()
        del self.master.subprocesses[spare.pid]  # from now on it is a job's child, reaped as such
        return spare

    def give_back(self, waiting: WaitingChild) -> None:
        """A child taken for a job that did not come (a shared store had none
        due): it becomes the spare again, or ends if there is one already."""
        if self.spare is None:
            self.spare = waiting
            self.master.subprocesses[waiting.pid] = functools.partial(self._spare_exited, waiting.pid)
            return
        os.close(waiting.order_fd)
        os.kill(waiting.pid, signal.SIGKILL)  # our unreaped child: the pid cannot name another process
        os.waitpid(waiting.pid, 0)

    def replenish(self) -> None:
        """Fork the next spare child, if the master will be starting jobs."""
        if self.spare is not None or not self.master.wants_spare() or time.monotonic() < self.not_before:
            return
        try:
            spare = self.fork()
        except OSError:
            return  # no spare for now: a job forks its own child (and reports the failure, if any)
        self.spare = spare
        self.master.subprocesses[spare.pid] = functools.partial(self._spare_exited, spare.pid)

    def _spare_exited(self, pid: int, status: int) -> None:
        if self.spare is None or self.spare.pid != pid:
            return
        # Killed from outside while waiting (the OOM killer, an operator): wait
        # a little before the next, so a spare that keeps dying is no fork loop.
        os.close(self.spare.order_fd)
        self.spare = None
        self.not_before = time.monotonic() + SPARE_RETRY_DELAY
        log.event(logging.WARNING, "spare_died", pid=pid, how=classify_exit(status)[1],
                  retry_in=f"{SPARE_RETRY_DELAY}s")

    def discard(self) -> None:
        """End the spare child and reap it now: before an exec or a handover
        (it runs the old code and holds the old settings) and when stopping."""
        spare, self.spare = self.spare, None
        if spare is None:
            return
        self.master.subprocesses.pop(spare.pid, None)
        os.close(spare.order_fd)
        os.kill(spare.pid, signal.SIGKILL)  # our unreaped child: the pid cannot name another process
        os.waitpid(spare.pid, 0)
