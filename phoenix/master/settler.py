"""The callback settler: starts each owed callback on the runner's threads,
and records in the journal that it ran (or failed, or timed out). The
journal says a callback is owed before it runs and done after, so it fires
once per job outcome across replacements and at least once across a crash."""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from phoenix import log
from phoenix.app import App, JobInfo
from phoenix.config import Config
from phoenix.linux.clock import Clock
from phoenix.linux.untrusted import stored_json
from phoenix.master.callbacks import CallbackRunner
from phoenix.master.metrics import Counters
from phoenix.store.base import Store


class CallbackSettler:
    def __init__(self, app: App | None, journal: Callable[[], Store], callbacks: CallbackRunner,
                 config: Callable[[], Config], counters: Counters, clock: Clock,
                 guarded: Callable[[Callable[[], Any], bool], None]) -> None:
        """`app`: None while no app is loaded (degraded): callbacks stay owed.
        `journal`: the store open now (a replayed write may find another
        than the one open when it was queued). `guarded(write, retry)`: run a
        journal write that an outage keeps for replay."""
        self.app = app
        self.journal = journal
        self.callbacks = callbacks
        self.config = config
        self.counters = counters
        self.clock = clock
        self.guarded = guarded
        # Callbacks that ran here whose `done` the store has not taken yet (an
        # outage: the write is replayed). Still owed in the store, they are
        # never started again meanwhile: a look for owed callbacks (a lease
        # renewal, the store's return) ran one 4 times in a session-kill storm.
        self.done_unrecorded: set[int] = set()

    def start(self, callback_id: int, job_id: int, number: int, kind: str) -> None:
        assert self.app is not None
        if callback_id in self.done_unrecorded:
            return  # it ran; its record is on its way
        app = self.app
        functions: list[Callable[..., Any]] = list(app.finished_callbacks if kind == "on_finished"
                                                   else app.failed_callbacks)
        if not functions:  # nothing registered: done, in one statement (no need to read the job)
            self.journal().callback_done(callback_id, None)
            return
        row = self.journal().job_row(job_id)
        assert row is not None
        reason, max_rss_kb = self.journal().attempt_end(job_id, number)
        info = JobInfo(job_id, row["key"], row["target"], stored_json(row["params"]), number, row["outcome"],
                       row["error"], reason, max_rss_kb)
        if kind == "on_finished":
            argument = stored_json(row["result"]) if row["result"] is not None else None
        else:
            argument = row["error"]
        if self.journal().callback_started(callback_id) is False:
            log.event(logging.WARNING, "callback_fenced", job=row["key"], callback=kind,
                      effect="not run here: this master's lease no longer owns it; the master that does runs it")
            return
        self.callbacks.start(callback_id, row["key"], kind, functions, info, argument)

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

    def settle(self) -> None:
        now = self.clock.monotonic()
        for running, error in self.callbacks.finished():
            if self.counters.histograms is not None:
                self.counters.histograms.callback_duration.observe(now - running.started)
            if error:
                self.counters.callback_errors += 1
                log.event(logging.ERROR, "callback_error", job=running.job_key, callback=running.kind)
                log.log.error("%s", error.rstrip())
            self.done_unrecorded.add(running.callback_id)
            self.guarded(functools.partial(self.record_done, running.callback_id, error), True)
        for running in self.callbacks.overdue(self.config().callback_timeout, now):
            self.counters.callback_errors += 1
            log.event(logging.ERROR, "callback_timeout", job=running.job_key, callback=running.kind,
                  limit=f"{self.config().callback_timeout}s")
            self.done_unrecorded.add(running.callback_id)
            self.guarded(functools.partial(self.record_done, running.callback_id,
                                           f"timed out after {self.config().callback_timeout} s"), True)

    def record_done(self, callback_id: int, error: str | None) -> None:
        """Through the journal open when it runs: one replayed after an outage
        may find another journal object than the one open when it was queued."""
        recorded = self.journal().callback_done(callback_id, error)
        self.done_unrecorded.discard(callback_id)  # (an exception leaves it in: the write is replayed)
        if recorded is False:
            log.event(logging.WARNING, "callback_fenced", callback_id=callback_id,
                      effect="it ran here, but another master took it over when this one's lease lapsed: "
                             "that master runs it too (callbacks get the job id and attempt to de-duplicate)")
