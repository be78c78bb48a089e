"""The running attempts, as the master watches them: one `Attempt` each, in
the one `AttemptTable`, built first and handed to every part that reads it.

Each field changing after an attempt is made has one writing part:

    last_beat, last_progress, progress, last_seq, missing,
    final, final_held, connection_closed_at      heartbeats.HeartbeatIntake
                                                 (the grace after an absence too)
    kill_reason, kill_detail, interrupted        hangs.HangKiller (kill, cancel, interrupt); a memory
                                                 kill: memory.MemoryWatchdog, cgroups.JobCgroups
    escaped                                      hangs.signal_attempt (what the job daemonised)
    pidfd, own_child                             reaper.Reaper (adopted children)
    max_memory, cgroup                           memory.Watchers (the watchdog, cgroups.JobCgroups)

The table's rows are added by the scheduler (an attempt it started) and the
reaper (an adopted one), and removed by the reaper (an attempt that ended)
or the master (children left running for the next master)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, ValuesView
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from phoenix.app import JobSpec
from phoenix.rules.liveness import Limits, excused
from phoenix.rules.states import KillReason


@dataclass(slots=True, eq=False)
class Attempt:
    """A child we forked, or one we adopted from an earlier master."""

    attempt_id: int
    job_id: int
    key: str
    target: str
    number: int  # 1 for a job's first attempt
    pid: int
    spec: JobSpec | None  # None: its target is not known to the loaded app
    started: float  # monotonic
    last_beat: float
    last_progress: float
    own_child: bool = True  # False: adopted from a dead master, watched through a pidfd
    pidfd: int | None = None
    progress: int = 0
    reported: list[Any] | None = None  # the job's latest phoenix.progress(): [done, total, note]
    reported_seq: int = -1  # the sequence number of the message that carried it
    last_seq: int = 0  # -1: not known yet (adopted: the first message sets it)
    missing: set[int] = field(default_factory=set)  # sequence numbers skipped that have not arrived (yet)
    final: dict[str, Any] | None = None  # the finished/failed message, once received
    final_held: bool = False  # the final is in the journal (and was acknowledged to the child)
    connection_closed_at: float | None = None  # monotonic: the child closed its connection (EOF) while it ran
    # Since when (monotonic) a checkpoint of its that the journal did not take
    # (an outage) waits for the master: the job is blocked in phoenix.checkpoint()
    # on the master's shortage, which neither its stall_timeout nor its
    # max_runtime counts (hangs.py). None: not waiting.
    checkpoint_waits_since: float | None = None
    waited_on_master: float = 0.0  # seconds of such waits that have ended
    kill_reason: KillReason | None = None
    kill_detail: str | None = None
    interrupted: bool = False
    final_before_stop: bool = False  # its final had come when Phoenix asked it to stop: the final is its outcome
    escaped: dict[int, int] = field(default_factory=dict)  # pid -> pidfd: its processes outside its group
    # The job's failures when this attempt began (only its own end changes
    # them meanwhile); None: adopted, the recorder reads them from the journal.
    failures: int | None = None
    max_memory: int | None = None  # bytes: killed past this (master/memory.py); None: no limit
    cgroup: str | None = None  # its memory cgroup's directory, whose limit the kernel enforces (master/cgroups.py)

    def limits(self, default_heartbeat_timeout: float) -> Limits:
        """This attempt's limits: its job's own, the app's heartbeat_timeout where the job sets none."""
        spec = self.spec
        if spec is None:
            return Limits(default_heartbeat_timeout)
        return Limits(spec.heartbeat_timeout or default_heartbeat_timeout, spec.stall_timeout, spec.max_runtime)

    def holds_only_copy(self) -> bool:
        """The child finished and sent its outcome, which the journal has not
        taken (an outage): it is the one durable holder of it, so no stop may
        signal it. (Once held, the outcome is safe, and the child may be ended.)"""
        return self.final is not None and not self.final_held

    def fresh_grace(self, now: float) -> None:
        """Silence until `now` was not this child's doing (an adoption, a master
        that was not running): its heartbeat and stall limits count from now."""
        self.last_beat = self.last_progress = max(self.last_beat, now)

    def wait_on_master(self, now: float) -> None:
        """Its checkpoint was refused for want of a writable journal: it waits on us from now."""
        if self.checkpoint_waits_since is None:
            self.checkpoint_waits_since = now

    def master_answered(self, now: float) -> None:
        """Its wait on the master is over (the ack, or it moved on): its stall clock starts again now."""
        if self.checkpoint_waits_since is not None:
            self.waited_on_master += now - self.checkpoint_waits_since
            self.checkpoint_waits_since = None
            self.last_progress = now

    def master_wait(self, now: float) -> float:
        """Seconds this attempt has spent blocked on the master's journal, the current wait included."""
        since = self.checkpoint_waits_since
        return self.waited_on_master + (now - since if since is not None else 0.0)

    def excuse(self, away: float, now: float) -> None:
        """The master was not running for `away` seconds: that much of this child's silence is not its own."""
        self.last_beat = excused(self.last_beat, away, now)
        self.last_progress = excused(self.last_progress, away, now)


_T = TypeVar("_T")


class AttemptTable(Mapping[int, Attempt]):
    """The running attempts by pid: read by every part, written only through
    add, remove and clear (so a reader can never keep a stale copy)."""

    def __init__(self) -> None:
        self._by_pid: dict[int, Attempt] = {}

    def __getitem__(self, pid: int) -> Attempt:
        return self._by_pid[pid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_pid)

    def __len__(self) -> int:
        return len(self._by_pid)

    # The dict's own methods, not Mapping's generic ones: the intake asks once per beat.
    @overload
    def get(self, pid: int, /) -> Attempt | None: ...
    @overload
    def get(self, pid: int, /, default: Attempt | _T) -> Attempt | _T: ...

    def get(self, pid: int, /, default: object = None) -> object:
        return self._by_pid.get(pid, default)

    def __contains__(self, pid: object) -> bool:
        return pid in self._by_pid

    def values(self) -> ValuesView[Attempt]:
        return self._by_pid.values()

    def add(self, attempt: Attempt) -> None:
        self._by_pid[attempt.pid] = attempt

    def remove(self, pid: int) -> Attempt | None:
        """The attempt of `pid`, no longer running; None if it had none."""
        return self._by_pid.pop(pid, None)

    def clear(self) -> None:
        """Let go of every attempt (their children keep running; another master adopts them)."""
        self._by_pid.clear()

    def with_key(self, key: str) -> Attempt | None:
        return next((a for a in self._by_pid.values() if a.key == key), None)
