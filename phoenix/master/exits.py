"""What a master's exit status says (pure rules, documented in `phoenix start --help`).

A service master (no --exit-when-done) is meant to run until it is stopped:
TERM, INT, QUIT or `phoenix stop` is how it ends, and it exits 0 (systemd
counts only 0 as a clean stop, unless told otherwise).

A batch master (--exit-when-done) answers "did the batch finish?", so that
`phoenix start app --exit-when-done && next_step` only carries on when it did:

    0        every job finished
    1        every job ended, and some failed or were cancelled
    128 + N  signal N stopped it while jobs were still pending or running
             (TERM 143, INT 130, QUIT 131), as a shell reports a process a
             signal ended; `phoenix stop` counts as TERM, `--drain` as QUIT

"Every job" is every job pending or running, and every job this run ended
(including those it adopted from an earlier master); a job that failed in an
earlier run and was not retried does not count (journal.batch_counts). A run
begins with `phoenix start` and goes on through USR2 replacements.

A batch that ended anyway (a drain that let the last job finish) answers 0
or 1: the exit status reports the journal, not the way the master was asked
to stop.
"""

from __future__ import annotations

import signal
from typing import Callable

from phoenix.rules.states import StopMode
from phoenix.store.outage import STORAGE_ERRORS

# The signal a stop requested over the control socket counts as.
STOP_MODE_SIGNALS = {StopMode.TERM: signal.SIGTERM, StopMode.DRAIN: signal.SIGQUIT, StopMode.LEAVE: signal.SIGTERM,
                     StopMode.HANDED_OVER: signal.SIGTERM}


def batch_done(counts: dict[str, int]) -> int:
    """The exit status of a batch whose every job has ended."""
    return 1 if counts["failed"] or counts.get("cancelled") else 0


def stopped_batch(stop_signal: int, counts: Callable[[], dict[str, int]]) -> int:
    """The exit status of a batch master stopped by `stop_signal`."""
    try:
        now = counts()
    except STORAGE_ERRORS:
        return 128 + stop_signal  # the journal cannot say the batch is done: it is not known to be
    if now["pending"] == 0 and now["running"] == 0:
        return batch_done(now)
    return 128 + stop_signal
