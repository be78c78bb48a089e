"""What an attempt's end means.

Outcomes (the `outcome` of an attempt and of its job in `phoenix status`):
    finished     the job returned; its result is recorded
    error        the job raised (traceback) or returned something unusable
    killed       Phoenix killed it; reason heartbeat_timeout | stall_timeout | max_runtime | operator
    crashed      died of a fatal signal of its own (SIGSEGV, SIGABRT, SIGBUS, ...)
    signalled    killed by a signal someone else sent (an outside SIGKILL or SIGTERM)
    exited       left with an exit code and no outcome (os._exit(3), sys.exit in a thread)
    lost         gone while no master watched, with no outcome in the outbox
    interrupted  stopped by `phoenix stop` / TERM; the job goes back to pending
    cancelled    ended by `phoenix cancel`; the job is `cancelled`, never re-run

Pure functions: tests/unit/test_outcomes.py checks every row without a process.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from typing import Any

from phoenix import protocol
from phoenix.states import KillReason, Outcome

# Signals a process raises against itself when it breaks.
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGSYS,
                  signal.SIGTRAP}


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def classify_exit(status: int) -> tuple[Outcome, str]:
    """(outcome, reason) of a process that ended without an outcome message."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        outcome = Outcome.CRASHED if signum in _CRASH_SIGNALS else Outcome.SIGNALLED
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return outcome, f"{signal_name(signum)}{core}"
    return Outcome.EXITED, f"exit code {os.WEXITSTATUS(status)}"


# The reason of a cancelled attempt, and the start of the error `on_failed` receives.
CANCELLED_REASON = "cancelled by the operator (phoenix cancel)"


@dataclass(frozen=True, slots=True)
class Classified:
    outcome: Outcome
    reason: str | None  # short, for logs and the status table
    error: str | None  # the traceback, or the reason with its detail (last line: the exception)
    result_json: str | None  # a finished job's result


def classify(*, final: dict[str, Any] | None, status: int | None, interrupted: bool,
             kill_reason: KillReason | None, kill_detail: str | None,
             lost_reason: str = "exited while adopted; its exit status went to its former parent") -> Classified:
    """The outcome of an attempt, from what is known of its end, most telling first:
    its own final message (or outbox file), a stop, a kill, its exit status.
    `status` is None when the process was not our child (adopted) or is gone.
    The error text is the traceback or the reason alone (its last line says
    what happened); max RSS is recorded in its own column, not in it."""
    reason: str | None = None
    error: str | None = None
    if final is not None and final.get(protocol.KIND) == "finished":
        return Classified(Outcome.FINISHED, None, None, json.dumps(final.get(protocol.RESULT)))
    if kill_reason == KillReason.CANCELLED:
        # The operator's word wins over a stop and over the error a job may
        # raise on its TERM: a cancelled job is never re-run.
        outcome, reason = Outcome.CANCELLED, CANCELLED_REASON
        if final is not None:
            error = f"{CANCELLED_REASON}; the job then reported:\n{final.get(protocol.ERROR)}"
    elif final is not None:
        outcome, error = Outcome.ERROR, str(final.get(protocol.ERROR))
    elif interrupted:
        outcome, reason = Outcome.INTERRUPTED, "stopped before it finished"
    elif kill_reason is not None:
        outcome, reason = Outcome.KILLED, str(kill_reason)
    elif status is not None:
        outcome, reason = classify_exit(status)
    else:
        outcome, reason = Outcome.LOST, lost_reason
    if error is None:
        error = reason if kill_detail is None else kill_detail
        if status is not None and outcome == Outcome.KILLED:
            error = f"{error}; ended by {classify_exit(status)[1]}"
    return Classified(outcome, reason, error, None)
