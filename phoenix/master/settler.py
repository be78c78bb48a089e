"""The callback settler: starts each owed callback on the runner's threads,
and records in the journal that it ran (or failed, or timed out). The
journal says a callback is owed before it runs and done after, so it fires
once per job outcome across replacements and at least once across a crash.

The done records are committed in groups (group commit): a callback that
ends waits up to DONE_GROUP_WINDOW for the master's next durable commit (the
finals it holds before their acks: commit_with), and rides along in it; a
group no such commit took by then is committed on its own, in one commit.
So a busy master spends no fsync of its own on a callback. A callback is
shown as done only once that commit is on disk (a power cut never runs
again one recorded as done); a crash inside the window runs the callbacks of
the group again (at least once), and a stop or a replacement waits for the
group's commit (exactly once)."""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from phoenix import log
from phoenix.app import App, BatchInfo, JobInfo
from phoenix.config import Config
from phoenix.linux.clock import Clock
from phoenix.linux.untrusted import stored_json
from phoenix.master.callbacks import CallbackRunner
from phoenix.master.metrics import Counters
from phoenix.store import batches
from phoenix.store.base import Store

# How long the done record of a callback that ended may wait for a durable
# commit to ride along in. Short beside anything a user waits on (a
# replacement waits for it, once), long beside the time between two jobs'
# finals with 2 slots even on a loaded machine (a few to some 20 ms).
DONE_GROUP_WINDOW = 0.05


class CallbackSettler:
    def __init__(self, app: App | None, journal: Callable[[], Store], callbacks: CallbackRunner,
                 config: Callable[[], Config], counters: Counters, clock: Clock,
                 guarded: Callable[[Callable[[], Any], bool], None],
                 callbacks_held: Callable[[], bool] = lambda: False) -> None:
        """`app`: None while no app is loaded (degraded): callbacks stay owed.
        `journal`: the store open now (a replayed write may find another
        than the one open when it was queued). `guarded(write, retry)`: run a
        journal write that an outage keeps for replay. `callbacks_held()`:
        True while new callbacks must stay owed (a replacement waits for the
        running ones to end)."""
        self.app = app
        self.journal = journal
        self.callbacks = callbacks
        self.config = config
        self.counters = counters
        self.clock = clock
        self.guarded = guarded
        self.callbacks_held = callbacks_held
        # Callbacks that ran here whose `done` the store has not taken yet (an
        # outage: the write is replayed). Still owed in the store, they are
        # never started again meanwhile: a look for owed callbacks (a lease
        # renewal, the store's return) ran one 4 times in a session-kill storm.
        self.done_unrecorded: set[int] = set()
        # Callbacks that ended, waiting for a commit: (id, error); and when the first of them ended.
        self.done_group: list[tuple[int, str | None]] = []
        self.group_since = 0.0

    def start(self, callback_id: int, job_id: int, number: int, kind: str) -> None:
        assert self.app is not None
        if callback_id in self.done_unrecorded:
            return  # it ran; its record is on its way
        app = self.app
        if kind == batches.KIND:
            self.start_batch(callback_id, job_id)
            return
        functions: list[Callable[..., Any]] = list(app.finished_callbacks if kind == "on_finished"
                                                   else app.failed_callbacks)
        if not functions:  # nothing registered: done, in one statement (no need to read the job)
            self.journal().callback_done(callback_id, None)
            return
        started = self.journal().start_callback(callback_id, job_id, number)  # its run counted, fenced
        if started is None:
            log.event(logging.WARNING, "callback_fenced", job_id=job_id, callback=kind,
                      effect="not run here: this master's lease no longer owns it; the master that does runs it")
            return
        row, reason, max_rss_kb = started
        info = JobInfo(job_id, row["key"], row["target"], stored_json(row["params"]), number, row["outcome"],
                       row["error"], reason, max_rss_kb)
        if kind == "on_finished":
            argument = stored_json(row["result"]) if row["result"] is not None else None
        else:
            argument = row["error"]
        self.callbacks.start(callback_id, row["key"], kind, functions, info, argument)

    def start_batch(self, callback_id: int, job_id: int) -> None:
        """A batch's on_batch_complete, owed on the member job whose end completed it."""
        assert self.app is not None
        functions: list[Callable[..., Any]] = list(self.app.batch_callbacks)
        journal = self.journal()
        if not functions:
            journal.callback_done(callback_id, None)
            return
        row = journal.job_row(job_id)
        assert row is not None and row["batch_id"] is not None
        (batch,) = journal.batches(batch_id=row["batch_id"])
        counts = {state: n for state, n in batch["counts"].items() if state in batches.FINAL_STATES}
        # Read here, in the loop's thread, whose connection the master's is (the
        # callback's thread may not use it), and bounded: a batch of 500,000
        # read here stalled the loop 4 s and kept 330 MB.
        members = journal.batch_jobs(batch["id"]) if batch["jobs"] <= BatchInfo.MAX_JOBS else None
        info = BatchInfo(batch["id"], batch["name"], counts, batch["completions"],
                         functools.partial(BatchInfo.listed, batch["name"], batch["jobs"], members))
        if journal.callback_started(callback_id) is False:
            log.event(logging.WARNING, "callback_fenced", batch=batch["name"], callback=batches.KIND,
                      effect="not run here: this master's lease no longer owns it; the master that does runs it")
            return
        self.callbacks.start(callback_id, f"batch:{batch['name']}", batches.KIND, functions, info)

    def owes(self, kind: str) -> bool:
        """Whether an outcome that calls for callbacks of `kind` owes any: not
        when the loaded app registered none of that kind (a row owed, started
        and marked done for nothing costs the master two reads and a commit per
        job). With no app loaded, its callbacks are not known: owed."""
        app = self.app
        if app is None:
            return True
        return bool(app.finished_callbacks if kind == "on_finished" else app.failed_callbacks)

    def run_owed(self) -> None:
        """Callbacks recorded as owed by an earlier master and never done: run
        them now (at least once across a crash; they get the job id and attempt
        to de-duplicate). Not while no app is loaded: they stay owed."""
        if self.app is None:
            return
        for callback_id, job_id, number, kind in self.journal().owed_callbacks():
            if callback_id not in self.callbacks.running and callback_id not in self.done_unrecorded:
                self.start(callback_id, job_id, number, kind)

    def settle(self, flush: bool = False) -> None:
        """Take the callbacks that ended or overran into the group of done
        records, and commit the group if it waited DONE_GROUP_WINDOW for
        another commit in vain (`flush`: now, as a stop does)."""
        now = self.clock.monotonic()
        if self.app is not None and not self.callbacks_held():
            # Batches this master's outcomes completed (a shared store's come by NOTIFY instead).
            for callback_id, job_id, number, kind in self.journal().take_owed_batch_callbacks():
                if callback_id not in self.callbacks.running:
                    self.start(callback_id, job_id, number, kind)
        for running, error in self.callbacks.finished():
            if self.counters.histograms is not None:
                self.counters.histograms.callback_duration.observe(now - running.started)
            if error:
                self.counters.callback_errors += 1
                log.event(logging.ERROR, "callback_error", job=running.job_key, callback=running.kind)
                log.log.error("%s", error.rstrip())
            self._ended(running.callback_id, error)
        for running in self.callbacks.overdue(self.config().callback_timeout, now):
            self.counters.callback_errors += 1
            log.event(logging.ERROR, "callback_timeout", job=running.job_key, callback=running.kind,
                  limit=f"{self.config().callback_timeout}s")
            self._ended(running.callback_id, f"timed out after {self.config().callback_timeout} s")
        if self.done_group and (flush or now >= self.group_since + DONE_GROUP_WINDOW):
            group, self.done_group = self.done_group, []
            self.guarded(functools.partial(self.record_done, group), True)

    def _ended(self, callback_id: int, error: str | None) -> None:
        if not self.done_group:
            self.group_since = self.clock.monotonic()
        self.done_unrecorded.add(callback_id)
        self.done_group.append((callback_id, error))

    def next_deadline(self) -> float | None:
        """When the group of done records waiting now is due for its commit."""
        return self.group_since + DONE_GROUP_WINDOW if self.done_group else None

    def holds_done(self) -> bool:
        """Callbacks that ended whose done records are not committed yet (a
        replacement waits for them, as for the callbacks still running)."""
        return bool(self.done_group)

    def record_done(self, group: list[tuple[int, str | None]]) -> None:
        """Through the journal open when it runs: one replayed after an outage
        may find another journal object than the one open when it was queued.
        One durable commit for the whole group."""
        self._recorded(group, self.journal().callbacks_done(group))

    def commit_with(self, commit: Callable[[list[tuple[int, str | None]]], list[bool | None]]) -> None:
        """Run `commit`, a durable commit of the master's, with the done
        records waiting now: they ride along in it, no fsync of their own.
        If it fails they wait on (committed on their own at the window's end)."""
        group, self.done_group = self.done_group, []
        try:
            recorded = commit(group)
        except BaseException:
            self.done_group = group + self.done_group
            raise
        self._recorded(group, recorded)

    def _recorded(self, group: list[tuple[int, str | None]], recorded: list[bool | None]) -> None:
        for (callback_id, _error), mine in zip(group, recorded, strict=True):
            self.done_unrecorded.discard(callback_id)  # (an exception leaves them in: the write is replayed)
            if mine is False:
                log.event(logging.WARNING, "callback_fenced", callback_id=callback_id,
                          effect="it ran here, but another master took it over when this one's lease lapsed: "
                                 "that master runs it too (callbacks get the job id and attempt to de-duplicate)")
