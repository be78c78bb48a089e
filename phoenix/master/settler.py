"""The callback settler: starts each owed callback on the runner's threads,
and records in the journal that it ran (or failed, or timed out). The
journal says a callback is owed before it runs and done after, so it fires
once per job outcome across replacements and at least once across a crash."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable, Protocol

from phoenix import log
from phoenix.app import App, BatchInfo, JobInfo
from phoenix.config import Config
from phoenix.linux.untrusted import stored_json
from phoenix.master.callbacks import CallbackRunner
from phoenix.master.metrics import Counters, Histograms
from phoenix.store import batches
from phoenix.store.base import Store


class SettlerHost(Protocol):
    app: App | None  # None: no app loaded (degraded); callbacks stay owed
    journal: Store
    callbacks: CallbackRunner
    config: Config
    counters: Counters
    histograms: Histograms | None

    def guarded(self, operation: Callable[[], Any], retry: bool = False) -> None: ...
    def callbacks_held(self) -> bool: ...


class CallbackSettler:
    def __init__(self, host: SettlerHost) -> None:
        self.host = host
        # Callbacks that ran here whose `done` the store has not taken yet (an
        # outage: the write is replayed). Still owed in the store, they are
        # never started again meanwhile: a look for owed callbacks (a lease
        # renewal, the store's return) ran one 4 times in a session-kill storm.
        self.done_unrecorded: set[int] = set()

    def start(self, callback_id: int, job_id: int, number: int, kind: str) -> None:
        assert self.host.app is not None
        if callback_id in self.done_unrecorded:
            return  # it ran; its record is on its way
        app = self.host.app
        if kind == batches.KIND:
            self.start_batch(callback_id, job_id)
            return
        functions: list[Callable[..., Any]] = list(app.finished_callbacks if kind == "on_finished"
                                                   else app.failed_callbacks)
        if not functions:  # nothing registered: done, in one statement (no need to read the job)
            self.host.journal.callback_done(callback_id, None)
            return
        row = self.host.journal.job_row(job_id)
        assert row is not None
        reason, max_rss_kb = self.host.journal.attempt_end(job_id, number)
        info = JobInfo(job_id, row["key"], row["target"], stored_json(row["params"]), number, row["outcome"],
                       row["error"], reason, max_rss_kb)
        if kind == "on_finished":
            argument = stored_json(row["result"]) if row["result"] is not None else None
        else:
            argument = row["error"]
        if self.host.journal.callback_started(callback_id) is False:
            log.event(logging.WARNING, "callback_fenced", job=row["key"], callback=kind,
                      effect="not run here: this master's lease no longer owns it; the master that does runs it")
            return
        self.host.callbacks.start(callback_id, row["key"], kind, functions, info, argument)

    def start_batch(self, callback_id: int, job_id: int) -> None:
        """A batch's on_batch_complete, owed on the member job whose end completed it."""
        assert self.host.app is not None
        functions: list[Callable[..., Any]] = list(self.host.app.batch_callbacks)
        if not functions:
            self.host.journal.callback_done(callback_id, None)
            return
        row = self.host.journal.job_row(job_id)
        assert row is not None and row["batch_id"] is not None
        (batch,) = self.host.journal.batches(batch_id=row["batch_id"])
        counts = {state: n for state, n in batch["counts"].items() if state in batches.FINAL_STATES}
        # Read here, in the loop's thread: the callback's thread may not use the
        # master's connection, and a second journal opened in the master's
        # process would drop its file locks (POSIX locks go with any close of the file).
        members = self.host.journal.batch_jobs(batch["id"])
        info = BatchInfo(batch["id"], batch["name"], counts, batch["completions"], lambda: list(members))
        if self.host.journal.callback_started(callback_id) is False:
            log.event(logging.WARNING, "callback_fenced", batch=batch["name"], callback=batches.KIND,
                      effect="not run here: this master's lease no longer owns it; the master that does runs it")
            return
        self.host.callbacks.start(callback_id, f"batch:{batch['name']}", batches.KIND, functions, info)

    def owes(self, kind: str) -> bool:
        """Whether an outcome that calls for callbacks of `kind` owes any: not
        when the loaded app registered none of that kind (a row owed, started
        and marked done for nothing costs the master two reads and a commit per
        job). With no app loaded, its callbacks are not known: owed."""
        app = self.host.app
        if app is None:
            return True
        return bool(app.finished_callbacks if kind == "on_finished" else app.failed_callbacks)

    def run_owed(self) -> None:
        """Callbacks recorded as owed by an earlier master and never done: run
        them now (at least once across a crash; they get the job id and attempt
        to de-duplicate). Not while no app is loaded: they stay owed."""
        if self.host.app is None:
            return
        for callback_id, job_id, number, kind in self.host.journal.owed_callbacks():
            if callback_id not in self.host.callbacks.running and callback_id not in self.done_unrecorded:
                self.start(callback_id, job_id, number, kind)

    def settle(self) -> None:
        now = time.monotonic()
        if self.host.app is not None and not self.host.callbacks_held():
            # Batches this master's outcomes completed (a shared store's come by NOTIFY instead).
            for callback_id, job_id, number, kind in self.host.journal.take_owed_batch_callbacks():
                if callback_id not in self.host.callbacks.running:
                    self.start(callback_id, job_id, number, kind)
        for running, error in self.host.callbacks.finished():
            if self.host.histograms is not None:
                self.host.histograms.callback_duration.observe(now - running.started)
            if error:
                self.host.counters.callback_errors += 1
                log.event(logging.ERROR, "callback_error", job=running.job_key, callback=running.kind)
                log.log.error("%s", error.rstrip())
            self.done_unrecorded.add(running.callback_id)
            self.host.guarded(functools.partial(self.record_done, running.callback_id, error), retry=True)
        for running in self.host.callbacks.overdue(self.host.config.callback_timeout, now):
            self.host.counters.callback_errors += 1
            log.event(logging.ERROR, "callback_timeout", job=running.job_key, callback=running.kind,
                  limit=f"{self.host.config.callback_timeout}s")
            self.done_unrecorded.add(running.callback_id)
            self.host.guarded(functools.partial(self.record_done, running.callback_id,
                                           f"timed out after {self.host.config.callback_timeout} s"), retry=True)

    def record_done(self, callback_id: int, error: str | None) -> None:
        """Through the journal open when it runs: one replayed after an outage
        may find another journal object than the one open when it was queued."""
        recorded = self.host.journal.callback_done(callback_id, error)
        self.done_unrecorded.discard(callback_id)  # (an exception leaves it in: the write is replayed)
        if recorded is False:
            log.event(logging.WARNING, "callback_fenced", callback_id=callback_id,
                      effect="it ran here, but another master took it over when this one's lease lapsed: "
                             "that master runs it too (callbacks get the job id and attempt to de-duplicate)")

