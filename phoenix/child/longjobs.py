"""What a long job uses to be resumable, inside its child: the checks of
phoenix.progress() and phoenix.checkpoint() arguments, and the polite stop
(phoenix.stopping(), phoenix.Interrupted on TERM). See docs/long-jobs.md.

Pure where it can be (tests/unit/test_long_jobs.py); the sending is
child/run.py's, on the connection the beats use.
"""

from __future__ import annotations

import math
import signal
from typing import Any

from phoenix.errors import UsageError
from phoenix.linux.untrusted import MAX_JSON_DEPTH, json_too_deep

# A progress note is a short line for the status table, not a log.
MAX_NOTE_CHARS = 200
# The child sends a changed progress at most this often from the job's own
# thread (the beat thread sends the latest with each beat anyway): a tight
# loop calling phoenix.progress() costs a comparison per call, not a send.
PROGRESS_EVERY = 0.15


class ForkedCheckpoint(UsageError, RuntimeError):
    """phoenix.checkpoint() in a process the job forked (a pool worker, say):
    only the job's own process saves its place."""


class Interrupted(BaseException):
    """Raised in a job's main thread when it is asked to stop (`phoenix stop`,
    a drain's time running out, a lease running out): save a checkpoint and
    let it propagate (or raise it again) within `kill_grace`. The attempt's
    outcome is then `interrupted`: no retry is used, and the next attempt
    starts from the checkpoint. A BaseException, as KeyboardInterrupt is, so
    that an `except Exception` in the job does not swallow it."""


# Numbers a float holds (metrics and the status table make floats of them).
_LIMIT = 2**63


def _number(value: object) -> bool:
    if isinstance(value, int) and type(value) is int:  # (not a bool)
        return -_LIMIT <= value < _LIMIT
    return isinstance(value, float) and type(value) is float and math.isfinite(value)


def _what(value: object) -> str:
    """A value named for an error line, never printed in full (a huge int's repr raises)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number out of range"
    return f"a {type(value).__name__}"


def progress_value(done: Any, total: Any, note: Any) -> list[Any]:
    """[done, total, note] as a message carries it; TypeError or ValueError
    (one line saying what to pass instead) for anything else."""
    if not _number(done) or (total is not None and not _number(total)):
        bad = "done" if not _number(done) else "total"
        raise TypeError(f"phoenix.progress() got {_what(done if bad == 'done' else total)} for {bad}: pass an int "
                        "(below 2**63 in size) or a finite float (total may be None)")
    if note is not None:
        if not isinstance(note, str):
            raise TypeError(f"phoenix.progress() takes a str note (or None), not a {type(note).__name__}")
        if len(note) > MAX_NOTE_CHARS:
            raise ValueError(f"the progress note is {len(note)} characters, over the {MAX_NOTE_CHARS}-character "
                             "limit of a note; shorten it (it is one line of the status table)")
    return [done, total, note]


def check_checkpoint(obj: Any) -> str:
    """The checkpoint as compact JSON, or TypeError / ValueError naming the fix.
    The size limit is the wire's (heartbeat.CheckpointTooLarge), checked when encoded."""
    import json

    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a checkpoint must be JSON ({exc}): save dicts, lists, strings, numbers, booleans or None "
                        "(a cursor, an offset, a last key)") from None
    except RecursionError:
        text = "[" * (MAX_JSON_DEPTH + 2)  # refused just below
    if json_too_deep(text):
        raise ValueError(f"the checkpoint nests more than {MAX_JSON_DEPTH} levels of lists and dicts, deeper than "
                         "Phoenix keeps: save a flatter value")
    return text


class PoliteStop:
    """The child's TERM handler: the first TERM marks the job as asked to
    stop and raises Interrupted in its main thread, unless the job is inside
    phoenix.checkpoint() (then it is raised once the checkpoint is saved).
    Later TERMs, and any after the job returned, only mark: the child must
    be able to hand over its outcome (or its checkpoint) in peace, and the
    master's KILL after kill_grace ends it if it does not leave."""

    def __init__(self) -> None:
        self.asked = False
        self.raised = False
        self.saving = False  # inside phoenix.checkpoint(): Interrupted waits for its end
        self.job_running = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.on_term)
        self.job_running = True

    def on_term(self, _signum: int, _frame: object) -> None:
        self.asked = True
        self.raise_if_due()

    def raise_if_due(self) -> None:
        if self.asked and self.job_running and not self.saving and not self.raised:
            self.raised = True
            raise Interrupted("asked to stop (SIGTERM): save a checkpoint and return; the next attempt resumes")

    def job_over(self) -> None:
        self.job_running = False
