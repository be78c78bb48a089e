"""The master's side of long jobs (docs/long-jobs.md): the jobs' progress,
written to the journal at a bounded rate, and checkpoints, held before they
are acknowledged or taken from the outbox with their attempt's end."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

from phoenix import log
from phoenix.child.run import checkpoint_outbox_path
from phoenix.linux.paths import StatePaths
from phoenix.master.attempts import Attempt
from phoenix.store import quarantine
from phoenix.store.base import Store
from phoenix.wire import heartbeat as protocol

# How often the journal gets the running jobs' latest progress: one
# transaction for all of them, so a thousand jobs reporting in tight loops
# cost two writes a second, and `phoenix show` (which reads the journal)
# is at most this far behind (the child sends within PROGRESS_EVERY).
PROGRESS_WRITE_EVERY = 0.5


def progress_json(value: list[Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


class ProgressWriter:
    """Writes the progress of the attempts the intake marked (by attempt id)."""

    def __init__(self, journal: Callable[[], Store], reported: dict[int, Attempt],
                 clock: Callable[[], float]) -> None:
        self.journal = journal  # (the master's journal is replaced on a storage recovery: asked each time)
        self.reported = reported
        self.clock = clock
        self.due = 0.0

    def next_deadline(self) -> float | None:
        return self.due if self.reported else None

    def write_if_due(self) -> None:
        """Called each loop turn; a storage error leaves the marks for the next write."""
        now = self.clock()
        if not self.reported or now < self.due:
            return
        self.due = now + PROGRESS_WRITE_EVERY
        rows = [(a.attempt_id, progress_json(a.reported)) for a in self.reported.values() if a.reported is not None]
        self.journal().save_progress(rows)
        self.reported.clear()



def keep_checkpoint(journal: Store, paths: StatePaths, job_id: int, number: int, data: bytes) -> None:
    """A checkpoint the attempt's child left in the outbox (no master answered
    it in time), read as `data`: into the journal (unless a newer one is kept
    there) before the attempt's end is recorded. Anything but a checkpoint
    of this attempt is quarantined, never taken."""
    path = checkpoint_outbox_path(str(paths.outbox), job_id, number)
    message = protocol.decode(data)
    if (message is None or message.job != job_id or message.attempt != number
            or message.kind != protocol.CHECKPOINT or protocol.SAVED not in message.body):
        quarantine.keep(paths.root, "outbox", data, "not a valid checkpoint message of this attempt", path=path,
                        job_id=job_id, attempt=number)
        return
    saved = json.dumps(message.body[protocol.SAVED], separators=(",", ":"))
    journal.save_checkpoints([(job_id, number, message.seq, saved)])


def remove_checkpoint_outbox(paths: StatePaths, job_id: int, number: int) -> None:
    remove_left_file(checkpoint_outbox_path(str(paths.outbox), job_id, number))


def remove_left_file(path: str) -> None:
    """Remove a file the attempt's process left in the outbox, once its
    content is in the journal. What a job put there that no unlink removes
    (a directory, a path under a file) is left with one log line, never
    taken for a journal outage (an outside check: no job started again)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        try:
            os.rmdir(path)  # an empty directory: gone too
        except OSError:
            log.event(logging.WARNING, "outbox_left", path=path, error=exc.strerror,
                      effect="left as it is: remove it by hand")
