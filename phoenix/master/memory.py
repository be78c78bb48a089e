"""The memory watchdog: a job with a `max_memory` whose process grows past
it is killed at once (SIGKILL to its group: memory does not wait for a
grace period), with outcome `killed` and reason `max_memory`; its retries
apply. Each job is looked at again when it could reach its limit growing
at PLANNED_GROWTH (rules/memory.py), so a job far below its limit costs a
read of /proc/PID/statm a second, and one near it a read every 20 ms.
It watches the attempts that have no cgroup of their own: where the master
may make them, the kernel enforces the limit instead (cgroups.py), and
`phoenix status` says "cgroup v1 PATH" or "cgroup v2 PATH" rather than "watchdog"."""

from __future__ import annotations

import heapq
import logging
from typing import Callable, Mapping, Protocol

from phoenix import log
from phoenix.app import JobSpec
from phoenix.linux import procfs
from phoenix.master.attempts import Attempt
from phoenix.master.cgroups import JobCgroups
from phoenix.master.metrics import Counters
from phoenix.rules.memory import FIRST_LOOK, next_look, size_text
from phoenix.rules.states import KillReason


class Watcher(Protocol):
    """The hang killer (hangs.HangKiller): its first look at a started or an adopted attempt."""

    def watch(self, attempt: Attempt, now: float) -> None: ...
    def watch_adopted(self, attempt: Attempt, now: float) -> None: ...
    def cancel(self, attempt: Attempt, now: float) -> None: ...
    def resume_kill(self, attempt: Attempt, reason: KillReason, now: float) -> None: ...


class MemoryWatchdog:
    def __init__(self, children: Mapping[int, Attempt], counters: Counters, clock: Callable[[], float],
                 default: Callable[[], int | None], kill_now: Callable[[Attempt], None]) -> None:
        self.counters = counters
        self.kill_now = kill_now  # SIGKILL to the attempt's group, no grace
        self.children = children  # pid -> attempt: the master's table, read here
        self.clock = clock
        self.default = default  # the max_memory setting, in bytes (a reload may change it)
        self.due: list[tuple[float, int, int]] = []  # (when, pid, attempt id): a heap

    def limit_for(self, spec: JobSpec | None) -> int | None:
        """A job's limit: its own, else the setting's."""
        own = spec.max_memory if spec is not None else None
        return own if own is not None else self.default()

    def watch(self, attempt: Attempt) -> None:
        """A new or adopted attempt: watched if its job has a limit and no cgroup enforces it."""
        attempt.max_memory = self.limit_for(attempt.spec)
        if attempt.max_memory is not None and attempt.cgroup is None:
            heapq.heappush(self.due, (self.clock() + FIRST_LOOK, attempt.pid, attempt.attempt_id))

    def next_deadline(self) -> float | None:
        return self.due[0][0] if self.due else None

    def look_if_due(self) -> None:
        now = self.clock()
        while self.due and self.due[0][0] <= now:
            _when, pid, attempt_id = heapq.heappop(self.due)
            attempt = self.children.get(pid)
            if attempt is None or attempt.attempt_id != attempt_id or attempt.max_memory is None:
                continue  # ended
            if attempt.kill_reason is not None or attempt.final is not None:
                continue  # being killed already, or done
            rss = procfs.rss_bytes(pid)
            if rss is None:
                continue  # gone (its end is being recorded)
            if rss > attempt.max_memory:
                self.kill(attempt, rss)
            else:
                heapq.heappush(self.due, (now + next_look(rss, attempt.max_memory), pid, attempt_id))

    def kill(self, attempt: Attempt, rss: int) -> None:
        limit = attempt.max_memory or 0
        attempt.kill_reason = KillReason.MAX_MEMORY
        # The bytes it read, exactly: the rusage peak recorded beside it comes from the kernel's
        # per-CPU counters at exit and may be a page or so lower than this reading.
        attempt.kill_detail = (f"max_memory: {size_text(rss)} resident ({rss} bytes), over the job's "
                               f"{size_text(limit)} limit (raise max_memory, or make the job use less)")
        self.counters.count(self.counters.kills, KillReason.MAX_MEMORY)
        log.event(logging.WARNING, "kill", pid=attempt.pid, job=attempt.key, attempt=attempt.number,
                  reason=KillReason.MAX_MEMORY, rss=size_text(rss), limit=size_text(limit))
        self.kill_now(attempt)


class Watchers:
    """The hang killer's watch of each started and adopted attempt, and the
    memory limit's (a cgroup, else the watchdog): what the scheduler and the
    reaper hand a new attempt to, and an ended one."""

    def __init__(self, hangs: Watcher, memory: MemoryWatchdog, cgroups: JobCgroups,
                 any_limit: Callable[[], bool]) -> None:
        """`any_limit()`: a job of the app, or the setting, has a max_memory."""
        self.hangs, self.memory, self.cgroups, self.any_limit = hangs, memory, cgroups, any_limit

    def place(self, attempt_id: int, pid: int, start_time: int | None, spec: JobSpec | None) -> str | None:
        """Before the child has its order: its attempt's cgroup, if its job has a limit a cgroup can enforce."""
        limit = self.memory.limit_for(spec)
        return self.cgroups.place(attempt_id, pid, start_time, limit) if limit is not None else None

    def watch(self, attempt: Attempt, now: float) -> None:
        self.hangs.watch(attempt, now)
        self.memory.watch(attempt)

    def watch_adopted(self, attempt: Attempt, now: float) -> None:
        self.hangs.watch_adopted(attempt, now)
        self.cgroups.adopt(attempt)
        self.memory.watch(attempt)

    def cancel(self, attempt: Attempt, now: float) -> None:
        self.hangs.cancel(attempt, now)

    def resume_kill(self, attempt: Attempt, reason: KillReason, now: float) -> None:
        self.hangs.resume_kill(attempt, reason, now)

    def ended(self, attempt: Attempt, status: int | None) -> None:
        """Its process ended: a kill by the kernel's OOM killer named, its cgroup removed."""
        self.cgroups.ended(attempt, status)

    def enforcer(self) -> str:
        """What `phoenix status` says enforces max_memory: "cgroup v2 PATH",
        "cgroup v1 PATH", "watchdog", or "none" while no job has a limit."""
        return self.cgroups.describe() if self.any_limit() else "none"
