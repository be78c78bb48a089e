"""One running attempt, as the master watches it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    kill_reason: KillReason | None = None
    kill_detail: str | None = None
    interrupted: bool = False
    escaped: dict[int, int] = field(default_factory=dict)  # pid -> pidfd: its processes outside its group
    # The job's failures when this attempt began (only its own end changes
    # them meanwhile); None: adopted, the recorder reads them from the journal.
    failures: int | None = None
    max_memory: int | None = None  # bytes: killed past this (master/memory.py); None: no limit

    def limits(self, default_heartbeat_timeout: float) -> Limits:
        spec = self.spec
        if spec is None:
            return Limits(default_heartbeat_timeout)
        return Limits(spec.heartbeat_timeout or default_heartbeat_timeout, spec.stall_timeout, spec.max_runtime)

    def fresh_grace(self, now: float) -> None:
        """Silence until `now` was not this child's doing (an adoption, a master
        that was not running): its heartbeat and stall limits count from now."""
        self.last_beat = self.last_progress = max(self.last_beat, now)

    def excuse(self, away: float, now: float) -> None:
        """The master was not running for `away` seconds: that much of this child's silence is not its own."""
        self.last_beat = excused(self.last_beat, away, now)
        self.last_progress = excused(self.last_progress, away, now)
