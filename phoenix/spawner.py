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

import errno
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

from phoenix import child, log, procfs

if TYPE_CHECKING:
    from phoenix.master import Master


@dataclass(slots=True)
class WaitingChild:
    """A forked child that has no job yet."""

    pid: int
    start_time: int | None  # with the pid, names this process for good (see procfs)
    order_fd: int  # the master's end of the pipe the child waits on

    def send(self, order: bytes) -> None:
        """Hand over the job; the pipe is closed afterwards either way."""
        try:
            view = memoryview(order)
            while view:
                view = view[os.write(self.order_fd, view):]
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            # It died while waiting: reaping it records how the attempt ended.
        finally:
            os.close(self.order_fd)


class Spawner:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.spare: WaitingChild | None = None

    def fork(self) -> WaitingChild:
        """A new waiting child (OSError if the system cannot fork now)."""
        m = self.master
        order_read, order_write = os.pipe2(os.O_CLOEXEC)
        keep = log.stream_fds()
        try:
            pid = os.fork()
        except OSError:
            os.close(order_read)
            os.close(order_write)
            raise
        if pid == 0:
            child.run(order_fd=order_read, resolve=m.spec_for, socket_path=str(m.paths.heartbeat_socket),
                      outbox=m.paths.outbox, keep_fds=keep)
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
        del self.master.other_children[spare.pid]  # from now on it is a job's child, reaped as such
        return spare

    def wanted(self) -> bool:
        m = self.master
        return m.state == "running" and m.handoff.phase == "idle" and not m.outage.active and m.workers > 0

    def replenish(self) -> None:
        """Fork the next spare child, if the master will be starting jobs."""
        if self.spare is not None or not self.wanted():
            return
        try:
            spare = self.fork()
        except OSError:
            return  # no spare for now: a job forks its own child (and reports the failure, if any)
        self.spare = spare
        self.master.other_children[spare.pid] = lambda status, pid=spare.pid: self._spare_exited(pid)

    def _spare_exited(self, pid: int) -> None:
        if self.spare is not None and self.spare.pid == pid:  # killed from outside while waiting
            os.close(self.spare.order_fd)
            self.spare = None

    def discard(self) -> None:
        """End the spare child and reap it now: before an exec or a handover
        (it runs the old code and holds the old settings) and when stopping."""
        spare, self.spare = self.spare, None
        if spare is None:
            return
        self.master.other_children.pop(spare.pid, None)
        os.close(spare.order_fd)
        os.kill(spare.pid, signal.SIGKILL)  # our unreaped child: the pid cannot name another process
        os.waitpid(spare.pid, 0)
