"""What an attempt's end means.

Outcomes (the `outcome` of an attempt and of its job in `phoenix status`):
    finished     the job returned; its result is recorded
    error        the job raised (traceback) or returned something unusable
    killed       Phoenix killed it; reason heartbeat_timeout | stall_timeout | max_runtime | operator |
                 max_memory; or the kernel's OOM killer did: max_memory (its cgroup's limit) | oom
    crashed      died of a fatal signal of its own (SIGSEGV, SIGABRT, SIGBUS, ...)
    signalled    killed by a signal someone else sent (an outside SIGKILL or SIGTERM)
    exited       left with an exit code and no outcome (os._exit(3), sys.exit in a thread)
    lost         gone while no master watched, with no outcome in the outbox
    interrupted  stopped by Phoenix (`phoenix stop`, a drain's time running out, a lease running
                 out) before it reported an outcome: whether it then ended on phoenix.Interrupted, an
                 error or a non-zero exit of its own TERM handler; back to pending, no retry used
    cancelled    ended by `phoenix cancel`; the job is `cancelled`, never re-run

Pure functions: tests/unit/test_outcomes.py checks every row without a process.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from typing import Any

from phoenix.linux.untrusted import MAX_JSON_DEPTH, json_too_deep
from phoenix.rules.states import KillReason, Outcome
from phoenix.wire import heartbeat as protocol

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


# The reason of an attempt that ended on phoenix.Interrupted when its master stopped it.
POLITELY_STOPPED = "stopped; it ended on phoenix.Interrupted"

OUTSIDE_TERM = "SIGTERM, not sent by Phoenix; the job ended on phoenix.Interrupted"

# The reason of an attempt Phoenix asked to stop that then ended in an error of its
# own (a TERM handler of the job's that calls sys.exit(1), an exception on the way out).
STOPPED_THEN_FAILED = "stopped; it then ended with an error"

# The reason of a cancelled attempt, and the start of the error `on_failed` receives.
CANCELLED_REASON = "cancelled by the operator (phoenix cancel)"


def _result_json(result: Any) -> str:
    """A finished job's result as the stores keep it: strict JSON (no NaN or
    Infinity, which JSON readers refuse), nested no deeper than a child sends."""
    text = json.dumps(result, allow_nan=False)
    if json_too_deep(text):
        raise ValueError(f"it nests more than {MAX_JSON_DEPTH} levels deep")
    return text


def _error_text(final: dict[str, Any]) -> str:
    """The error a failed final reports: a child always sends text; a value of
    another sender is not rendered (str() of a deeply nested one would recurse)."""
    error = final.get(protocol.ERROR)
    return error if isinstance(error, str) else f"the job's error report is not text (a {type(error).__name__})"


@dataclass(frozen=True, slots=True)
class Classified:
    outcome: Outcome
    reason: str | None  # short, for logs and the status table
    error: str | None  # the traceback, or the reason with its detail (last line: the exception)
    result_json: str | None  # a finished job's result


def classify(*, final: dict[str, Any] | None, status: int | None, interrupted: bool,
             kill_reason: KillReason | None, kill_detail: str | None, final_before_stop: bool = False,
             lost_reason: str = "exited while adopted; its exit status went to its former parent") -> Classified:
    """The outcome of an attempt, from what is known of its end, most telling first:
    its own final message (or outbox file), a stop, a kill, its exit status.
    `status` is None when the process was not our child (adopted) or is gone.
    `interrupted`: Phoenix asked it to stop (its TERM); `final_before_stop`:
    its final had already come then, or when it was cancelled (the stop
    only hurried its exit), so that final is its outcome, and not the stop.
    The error text is the traceback or the reason alone (its last line says
    what happened); max RSS is recorded in its own column, not in it."""
    reason: str | None = None
    error: str | None = None
    polite = final is not None and final.get(protocol.INTERRUPTED) is True
    if polite:
        # The job let phoenix.Interrupted end it: the attempt ended for the
        # reason it was stopped, not of its own error.
        final = None
        if not interrupted and kill_reason is None:  # a TERM Phoenix did not send: as if it had killed the job
            return Classified(Outcome.SIGNALLED, "SIGTERM", OUTSIDE_TERM, None)
    # A cancel asked before the job's final came wins over that final, even a
    # finished one (its own TERM handler's sys.exit(0)): a cancelled job stays cancelled.
    cancelled_first = kill_reason == KillReason.CANCELLED and not final_before_stop
    if final is not None and final.get(protocol.KIND) == "finished" and not cancelled_first:
        try:
            return Classified(Outcome.FINISHED, None, None, _result_json(final.get(protocol.RESULT)))
        except (ValueError, RecursionError) as exc:  # a child's encoder refuses both: another sender wrote it
            final = {protocol.ERROR: f"the job's result cannot be kept as JSON ({exc}); nothing was recorded of it"}
    if kill_reason == KillReason.CANCELLED:
        # The operator's word wins over a stop and over the error a job may
        # raise on its TERM: a cancelled job is never re-run.
        outcome, reason = Outcome.CANCELLED, CANCELLED_REASON
        if final is not None:
            error = f"{CANCELLED_REASON}; the job then reported:\n{_error_text(final)}"
    elif final is not None and interrupted and not final_before_stop:
        # Phoenix's TERM came first: whatever the job then made of it (its own
        # handler's sys.exit(143), an error while unwinding) is the stop's
        # doing, not the job's failure. No retry used; it resumes.
        outcome, reason = Outcome.INTERRUPTED, STOPPED_THEN_FAILED
        error = f"{kill_detail or STOPPED_THEN_FAILED}; the job then reported:\n{_error_text(final)}"
    elif final is not None and kill_reason is not None and not final_before_stop:
        # Killed (a hang, max_runtime, an operator's kill): an error the job
        # reported on that TERM is the kill's doing, and the kill's reason stays
        # what an operator sees and what the metrics count.
        outcome, reason = Outcome.KILLED, str(kill_reason)
        error = f"{kill_detail or kill_reason}; the job then reported:\n{_error_text(final)}"
    elif final is not None:
        outcome, error = Outcome.ERROR, _error_text(final)
    elif interrupted:
        outcome, reason = Outcome.INTERRUPTED, POLITELY_STOPPED if polite else "stopped before it finished"
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
