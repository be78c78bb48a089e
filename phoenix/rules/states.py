"""The master's typed states and the transitions each may make.

Every state field has one writer, which checks the move against the tables
here (supervisor's `change_state` / `_assertInState`): a move that is not in
the table is a bug in Phoenix, raised at once rather than carried on."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from phoenix.errors import InternalError


class MasterState(StrEnum):
    STARTING = "starting"  # sockets bound, adopting; not ready yet
    RUNNING = "running"
    DEGRADED = "degraded"  # no app loaded: watches and records, starts nothing (see docs/failure-modes.md)
    DRAINING = "draining"  # QUIT: starts nothing, waits for running jobs
    STOPPING = "stopping"  # TERM: children told to stop
    STOPPED = "stopped"  # the loop ends


class StopMode(StrEnum):
    TERM = "term"  # TERM each child's group, KILL after kill_grace; jobs back to pending
    DRAIN = "drain"  # let running jobs finish
    LEAVE = "leave"  # exit, children keep running for the next master
    HANDED_OVER = "handed_over"  # fork mode: the new master has them


class HandoffPhase(StrEnum):
    IDLE = "idle"
    PREFLIGHT = "preflight"  # `phoenix check` of the new code runs
    WAITING_CALLBACKS = "waiting_callbacks"  # exec once none runs
    FORKED = "forked"  # fork mode: the new master starts


class Outcome(StrEnum):
    """How one attempt ended (see policy.py for what each means)."""

    FINISHED = "finished"
    ERROR = "error"
    KILLED = "killed"
    CRASHED = "crashed"
    SIGNALLED = "signalled"
    EXITED = "exited"
    LOST = "lost"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"  # `phoenix cancel` ended it: no re-run


class KillReason(StrEnum):
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    # Silent for heartbeat_timeout after it closed its own connection (closed
    # every descriptor, or the heartbeat socket): not a hang, a job's mistake.
    CONNECTION_CLOSED = "connection_closed"
    STALL_TIMEOUT = "stall_timeout"
    MAX_RUNTIME = "max_runtime"
    OPERATOR = "operator"
    CANCELLED = "cancelled"  # `phoenix cancel`: the outcome is `cancelled`, never re-run
    MAX_MEMORY = "max_memory"  # past the job's max_memory: the watchdog (master/memory.py) or its cgroup's limit
    OOM = "oom"  # the kernel's OOM killer, outside the job's own limit (master/cgroups.py)


class TimerKind(StrEnum):
    CHECK = "check"  # judge the attempt's liveness
    KILL = "kill"  # kill_grace is over: SIGKILL


MASTER_TRANSITIONS: dict[MasterState, frozenset[MasterState]] = {
    MasterState.STARTING: frozenset({MasterState.RUNNING, MasterState.DEGRADED, MasterState.STOPPING,
                                     MasterState.STOPPED}),
    MasterState.RUNNING: frozenset({MasterState.DRAINING, MasterState.STOPPING, MasterState.STOPPED}),
    MasterState.DEGRADED: frozenset({MasterState.DRAINING, MasterState.STOPPING, MasterState.STOPPED}),
    MasterState.DRAINING: frozenset({MasterState.STOPPING, MasterState.STOPPED}),
    MasterState.STOPPING: frozenset({MasterState.STOPPED}),
    MasterState.STOPPED: frozenset(),
}

HANDOFF_TRANSITIONS: dict[HandoffPhase, frozenset[HandoffPhase]] = {
    HandoffPhase.IDLE: frozenset({HandoffPhase.PREFLIGHT}),
    HandoffPhase.PREFLIGHT: frozenset({HandoffPhase.IDLE, HandoffPhase.WAITING_CALLBACKS}),
    HandoffPhase.WAITING_CALLBACKS: frozenset({HandoffPhase.IDLE, HandoffPhase.FORKED}),
    HandoffPhase.FORKED: frozenset({HandoffPhase.IDLE}),
}


class BadTransition(InternalError, RuntimeError):
    """A state moved in a way its table does not allow: a bug in Phoenix."""


S = TypeVar("S", bound=StrEnum)


def check_move(table: dict[S, frozenset[S]], current: S, new: S) -> S:
    """`new`, if the table allows current -> new (staying put is always allowed)."""
    if new != current and new not in table[current]:
        raise BadTransition(f"{type(current).__name__}: {current} -> {new} is not allowed")
    return new
