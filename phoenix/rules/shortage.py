"""The master's own resource shortages (pure rules): how many job slots the
open-file limit and the limits on tasks can carry, and the back-off of a
master that cannot fork.

A fork the master (or its fork server) cannot make is the master's problem,
never the job's: the job stays pending, uses no attempt and no retry, and the
master tries again after a bounded back-off of its own. The shortage is
logged once when it starts and once when it ends, not at every try."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Iterable

# Descriptors the master holds whatever its slots: stdio, the journal (and its
# WAL and shared memory), the lock, the signalfd, two epoll sets, the heartbeat
# and control listeners, the fork server's socket, the spares' order pipes, the
# callbacks' wake pipe, a log file, the metrics server, a /proc read, and some
# room for callbacks and start-up hooks (measured: 19 at rest with one slot).
BASE_FDS = 32
# Per running child: its heartbeat connection, a pidfd once adopted, its order
# pipe while it starts (and a pidfd per process it daemonised, rarely).
FDS_PER_SLOT = 3
# Errors that say the system (or this process) is out of something, not that
# the request was wrong: retried later, never charged to a job.
SHORTAGE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM, errno.ENOBUFS, errno.ENOSPC})

# Tasks (each takes a pid, and counts against pid_max, threads-max, the
# user's RLIMIT_NPROC and the cgroup's pids.max) per running child: the job's
# thread and the thread that beats for it.
TASKS_PER_SLOT = 2
# Tasks a master needs whatever its slots: itself, its callback threads and
# metrics server, the fork server and its spares, a preflight or a new image
# during a replacement, and room for what start-up hooks and callbacks run.
BASE_TASKS = 32

FIRST_RETRY = 0.1  # seconds before the first new try after a fork failed
MAX_RETRY = 5.0  # the back-off's cap: a shortage that ends is noticed within this


def fds_needed(slots: int) -> int:
    """Open files a master with `slots` busy slots may hold at once."""
    return BASE_FDS + FDS_PER_SLOT * max(0, slots)


def slots_that_fit(fd_limit: int) -> int:
    """The most slots a master can carry under an open-file limit of `fd_limit`."""
    return max(0, (fd_limit - BASE_FDS) // FDS_PER_SLOT)


def tasks_needed(slots: int) -> int:
    """Tasks (processes and threads) a master with `slots` busy slots may run at once."""
    return BASE_TASKS + TASKS_PER_SLOT * max(0, slots)


def slots_for_tasks(task_limit: int) -> int:
    """The most slots a master can carry under a limit of `task_limit` tasks."""
    return max(0, (task_limit - BASE_TASKS) // TASKS_PER_SLOT)


@dataclass(frozen=True, slots=True)
class TaskLimit:
    """One limit on the tasks a master and its children may run, as the operator names and raises it."""

    setting: str  # e.g. "kernel.pid_max"
    value: int
    fix: str  # how to raise it


def tightest(limits: Iterable[TaskLimit]) -> TaskLimit | None:
    """The limit that carries the fewest slots, or None when there is none."""
    return min(limits, key=lambda limit: limit.value, default=None)


def task_refusal(slots: int, limits: Iterable[TaskLimit]) -> str | None:
    """Why `slots` cannot start under these limits (one line naming the
    setting to raise), or None when the tightest carries them."""
    limit = tightest(limits)
    if limit is None or tasks_needed(slots) <= limit.value:
        return None
    return (f"workers = {slots} need {tasks_needed(slots)} tasks (each child is {TASKS_PER_SLOT}: the job and its "
            f"heartbeat thread), more than {limit.setting} ({limit.value}) allows: {limit.fix}, or set workers to "
            f"at most {slots_for_tasks(limit.value)}")


@dataclass(slots=True)
class ForkBackoff:
    """The master's back-off while it cannot fork: doubling from FIRST_RETRY up to MAX_RETRY."""

    since: float | None = None  # monotonic: when the shortage began (None: no shortage)
    failures: int = 0
    retry_at: float = 0.0  # monotonic: no fork before this

    def blocked(self, now: float) -> bool:
        return self.since is not None and now < self.retry_at

    def failed(self, now: float) -> bool:
        """A fork failed at `now`; True if this starts a shortage (the one time to say so)."""
        first = self.since is None
        if first:
            self.since = now
        self.failures += 1
        self.retry_at = now + min(MAX_RETRY, FIRST_RETRY * 2 ** (self.failures - 1))
        return first

    def succeeded(self, now: float) -> tuple[float, int] | None:
        """A fork worked: (seconds the shortage lasted, forks that failed), or None if there was none."""
        if self.since is None:
            return None
        ended = (now - self.since, self.failures)
        self.since, self.failures, self.retry_at = None, 0, 0.0
        return ended
