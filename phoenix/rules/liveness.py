"""Whether a running attempt is alive, and whether the master itself was.

Pure functions of times (monotonic seconds): the hang killer in master.py
asks them, and tests/unit/test_liveness.py checks them without processes."""

from __future__ import annotations

from dataclasses import dataclass

from phoenix.rules.states import KillReason


@dataclass(frozen=True, slots=True)
class Limits:
    """An attempt's time limits (None: no such limit)."""

    heartbeat_timeout: float
    stall_timeout: float | None = None
    max_runtime: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: KillReason | None  # None: alive
    next_check: float  # when the earliest limit falls due (or fell due)


def verdict(limits: Limits, *, last_beat: float, last_progress: float, started: float, now: float) -> Verdict:
    """Kill for the limit that fell due first, if any has; else check again when the next falls due."""
    deadlines = [(last_beat + limits.heartbeat_timeout, KillReason.HEARTBEAT_TIMEOUT)]
    if limits.stall_timeout:
        deadlines.append((last_progress + limits.stall_timeout, KillReason.STALL_TIMEOUT))
    if limits.max_runtime:
        deadlines.append((started + limits.max_runtime, KillReason.MAX_RUNTIME))
    due, reason = min(deadlines, key=lambda d: d[0])
    return Verdict(reason if due <= now else None, due)


def master_was_away(expected_wake: float, woke: float, worked: float, heartbeat_interval: float) -> bool:
    """True when the master's own loop did not run for a while (SIGSTOP, a VM
    pause, swap, a disk that stalls a journal write): it woke later than it
    meant to by more than a beat interval (and at least a quarter second, so
    scheduler jitter never counts), or its last turn of work took longer than
    two intervals (and at least a second: a slice of forks is work, not
    absence). The children's silence over that gap is the master's, not
    theirs: each gets fresh grace."""
    overslept = woke - expected_wake > max(0.25, heartbeat_interval)
    stuck = worked > max(1.0, 2 * heartbeat_interval)
    return overslept or stuck


def excused(last: float, away: float, now: float) -> float:
    """A child's last beat (or progress) moved on by the time the master was
    away: silence over that gap does not count against the child (a VM pause
    froze the children too), and no more than the gap does. A master that is
    away again and again (an overloaded machine) still finds a frozen child,
    later by the sum of its own absences, instead of forgiving it for ever."""
    return min(now, last + away)
