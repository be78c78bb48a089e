"""The outcome recorder: how each attempt ended, recorded exactly once, and
what becomes of its job (policy.after_attempt), in one journal transaction."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
from typing import Any, Callable, Protocol

from phoenix import log
from phoenix.child import output
from phoenix.child.run import checkpoint_outbox_path
from phoenix.config import Config
from phoenix.errors import StateError
from phoenix.linux import lineage
from phoenix.linux.clock import Clock
from phoenix.linux.paths import StatePaths
from phoenix.linux.untrusted import UnusableFile, read_left_file
from phoenix.master import longjobs
from phoenix.master.attempts import Attempt
from phoenix.master.metrics import Counters
from phoenix.master.specs import JobSpecs
from phoenix.rules.outcomes import CANCELLED_REASON, Classified, classify
from phoenix.rules.policy import Next, RestartBudget, after_attempt
from phoenix.rules.shortage import SHORTAGE_ERRNOS
from phoenix.rules.states import Outcome
from phoenix.store import quarantine
from phoenix.store.base import OpenAttempt, SharedStore, Store, default_node
from phoenix.store.outage import STORAGE_ERRORS
from phoenix.wire import heartbeat as protocol

LOST_UNWATCHED = "the process ended while no master watched it"
QUARANTINED = "outcome quarantined"  # the reason of an attempt whose outcome the store would not take


class OutboxUnreadable(StateError, OSError):
    """An outbox file could not be read for want of descriptors or memory."""


class Callbacks(Protocol):
    """What the recorder asks of the callback settler (settler.CallbackSettler)."""

    def owes(self, kind: str) -> bool: ...
    def start(self, callback_id: int, job_id: int, number: int, kind: str) -> None: ...
    def commit_with(self, commit: Callable[[list[tuple[int, str | None]]], list[bool | None]]) -> None: ...


class OutcomeRecorder:
    def __init__(self, journal: Callable[[], Store], config: Callable[[], Config], budget: Callable[[], RestartBudget],
                 specs: JobSpecs, paths: StatePaths, counters: Counters, clock: Clock,
                 guarded: Callable[[Callable[[], Any], bool], None], callbacks: Callbacks,
                 callbacks_held: Callable[[], bool], jobs_may_be_pending: Callable[[], None]) -> None:
        """`budget`: the restart budget in force (a reload makes a new one).
        `guarded(write, retry)`: run a journal write that an outage keeps for
        replay. `callbacks_held()`: True while new callbacks must stay owed in
        the journal (a replacement waits for callbacks to end; no app loaded).
        `jobs_may_be_pending()`: an attempt ended (its job may run again, a slot is free)."""
        self.journal = journal
        self.config = config
        self.budget = budget
        self.specs = specs
        self.paths = paths
        self.counters = counters
        self.clock = clock
        self.guarded = guarded
        self.callbacks = callbacks
        self.callbacks_held = callbacks_held
        self.jobs_may_be_pending = jobs_may_be_pending
        self.unread: list[Callable[[], None]] = []  # ends to record once the outbox can be read

    def conclude(self, attempt: Attempt, status: int | None, max_rss_kb: int | None) -> None:
        """The attempt's process has ended (reaped, or its pidfd fired)."""
        try:
            os.killpg(attempt.pid, signal.SIGKILL)  # grandchildren die with the job
        except (ProcessLookupError, PermissionError):
            pass
        lineage.end_escaped(attempt.escaped)  # and so does what it daemonised
        self._when_outbox_readable(functools.partial(self._record_end, attempt, status, max_rss_kb))

    def _record_end(self, attempt: Attempt, status: int | None, max_rss_kb: int | None) -> None:
        final = attempt.final or self.read_outbox(attempt.job_id, attempt.number)
        if attempt.reported is not None:  # kept with the attempt (only shown: not replayed after an outage)
            self.guarded(functools.partial(self.journal().save_progress,
                                           [(attempt.attempt_id, longjobs.progress_json(attempt.reported))]), False)
        result = classify(final=final, status=status, interrupted=attempt.interrupted,
                          kill_reason=attempt.kill_reason, kill_detail=attempt.kill_detail,
                          final_before_stop=attempt.final_before_stop)
        duration = self.clock.monotonic() - attempt.started
        # An acknowledged final does not mean the child wrote no outbox file: a
        # master frozen past outcome_delivery_timeout acks the final its socket
        # kept only after the child gave up waiting and wrote the file. Left
        # there, the file would be read as the outcome of a later attempt with
        # the same job id and number (one unlink that finds nothing, per job).
        self.guarded(functools.partial(self.record, attempt.job_id, attempt.key, attempt.target, attempt.attempt_id,
                                       attempt.number, result, max_rss_kb, attempt.pid,
                                       failures=attempt.failures, duration=duration), True)
        if self.counters.histograms is not None:
            self.counters.histograms.job_duration.labels(result.outcome).observe(duration)
        self.jobs_may_be_pending()

    def conclude_without_process(self, a: OpenAttempt, reason: str) -> None:
        """An attempt the journal says runs, whose process is gone (or never
        started): its outcome is in the outbox, or it is lost."""
        self._when_outbox_readable(functools.partial(self._record_without_process, a, reason))

    def _record_without_process(self, a: OpenAttempt, reason: str) -> None:
        final = self.held_final(a) or self.read_outbox(a.job_id, a.n)
        result = classify(final=final, status=None, interrupted=False,
                          kill_reason=a.ending, kill_detail=None,
                          lost_reason=reason)
        self.record(a.job_id, a.key, a.target, a.attempt_id, a.n, result, None, a.pid)

    def _when_outbox_readable(self, record: Callable[[], None]) -> None:
        """Record an attempt's end now, or, if its outbox file cannot be read
        for want of descriptors or memory, later: an outcome the child left
        there is never taken for none (and its file then removed)."""
        try:
            record()
        except OutboxUnreadable as exc:
            if not self.unread:
                log.event(logging.ERROR, "outbox_unreadable", path=exc.filename, error=exc.strerror,
                          effect="the attempt's end is recorded once the outbox can be read (tried every turn)")
            self.unread.append(record)

    def record_unread(self) -> None:
        """Attempts whose end waits on an outbox read that failed: try again (each loop turn)."""
        waiting, self.unread = self.unread, []
        for index, record in enumerate(waiting):
            try:
                record()
            except OutboxUnreadable:
                self.unread.extend(waiting[index:])  # still short: the rest keep their order
                return
        if waiting:
            log.event(logging.WARNING, "outbox_readable", recorded=len(waiting))

    def record(self, job_id: int, key: str, target: str, attempt_id: int, number: int, result: Classified,
               max_rss_kb: int | None, pid: int | None, outbox: bool = True, failures: int | None = None,
               decided: Next | None = None, duration: float | None = None) -> None:
        """`failures`: the job's, if known (else read from the journal);
        `decided`: what becomes of the job, if decided already (its restart
        budget place booked): the same outcome, recorded again; `duration`:
        the attempt's seconds, if known (its span's length)."""
        journal, config = self.journal(), self.config()
        if failures is None:
            job = journal.job_row(job_id)
            assert job is not None
            failures = int(job["failures"])
        if decided is None:
            result = self.cancelled_meanwhile(attempt_id, result)
        now = self.clock.monotonic()
        after = decided or after_attempt(result.outcome, failures, self.specs.retries_for(target),
                                         budget=self.budget(), now=now, backoff_base=config.backoff_base,
                                         backoff_cap=config.backoff_cap)
        retry_delay = after.delay if after.job_state == "pending" and after.counts_as_failure else None
        callback = after.callback if after.callback is not None and self.callbacks.owes(after.callback) else None
        # Started at once below unless held: a shared store then counts its run in the outcome's statement.
        start_callback = callback is not None and not self.callbacks_held()
        # An outcome read from an outbox file is durable before that file goes (a power cut between the two).
        from_outbox = outbox and os.path.exists(self.outbox_path(job_id, number))
        checkpoint_file = self.take_checkpoint(job_id, number)  # durable: its file may go with the end's
        try:
            recorded, callback_id = journal.end_attempt(
                attempt_id, job_id, outcome=result.outcome, reason=result.reason, error=result.error,
                result_json=result.result_json, max_rss_kb=max_rss_kb, job_state=after.job_state,
                counts_as_failure=after.counts_as_failure, retry_delay=retry_delay, callback=callback,
                attempt_n=number, durable=from_outbox, start_callback=start_callback,
            )
        except STORAGE_ERRORS:
            raise  # an outage: the write is replayed as it is once the store is back
        except Exception as exc:  # noqa: BLE001 - what the store refuses is put aside, never a crash (loop)
            if result.outcome == Outcome.ERROR and result.reason == QUARANTINED:
                raise  # Phoenix's own text refused: not the job's data, and no second way round
            name = quarantine.keep(self.paths.root, "outcome", repr(result), f"the store refused it: {exc!r}",
                                   job=key, attempt=number)
            kept = f"kept as {name} (see phoenix quarantine)" if name else "it could not be kept either"
            self.record(job_id, key, target, attempt_id, number,
                        Classified(Outcome.ERROR, QUARANTINED, f"the attempt's outcome could not be recorded "
                                   f"({type(exc).__name__}); {kept}", None),
                        max_rss_kb, pid, outbox, failures, decided=after if result.outcome == Outcome.ERROR else None)
            return
        if outbox:
            self.remove_outbox(job_id, number)
        if checkpoint_file:
            longjobs.remove_checkpoint_outbox(self.paths, job_id, number)
        if not recorded:
            return  # another master recorded it first (a fork-mode handover)
        self.counters.count(self.counters.attempts, result.outcome)
        if config.otel:  # imported only when on: nothing of OpenTelemetry in a master (or its children) without it
            from phoenix.master import tracing
            tracing.attempt_ended(key=key, target=target, number=number, outcome=result.outcome, reason=result.reason,
                                  node=config.node or default_node(config.state_dir), duration=duration)
        if result.outcome not in (Outcome.FINISHED, Outcome.ERROR):  # its process did not end its own way
            output.bound_after_end(self.paths.output, job_id, number, config.job_output_max_bytes)
        self._log(pid, key, number, result, after, max_rss_kb)
        if callback_id is not None and start_callback:
            # While a replacement waits for callbacks to end, new ones stay owed
            # in the journal and the new image runs them.
            self.callbacks.start(callback_id, job_id, number, callback or "")

    def cancelled_meanwhile(self, attempt_id: int, result: Classified) -> Classified:
        """An attempt that failed, or was stopped, just as a cancel was asked
        of it on another host (in the store), before this master heard so:
        the cancel holds, and the job is not run again. One look in the
        store, and only for an end other than finished or cancelled."""
        journal = self.journal()
        if result.outcome in (Outcome.FINISHED, Outcome.CANCELLED) or not isinstance(journal, SharedStore):
            return result
        if attempt_id not in journal.cancels_requested():
            return result
        return Classified(Outcome.CANCELLED, CANCELLED_REASON,
                          f"{CANCELLED_REASON}; the attempt had ended first: {result.error or result.reason}", None)

    def _log(self, pid: int | None, key: str, number: int, result: Classified, after: Next,
             max_rss_kb: int | None) -> None:
        outcome, job_state = result.outcome, after.job_state
        fields: dict[str, Any] = {"pid": pid, "job": key, "attempt": number, "outcome": outcome}
        if result.reason:
            fields["reason"] = result.reason
        if result.error and outcome not in (Outcome.FINISHED, Outcome.INTERRUPTED):
            last_line = result.error.rstrip().rpartition("\n")[2].strip()  # a traceback's: the exception
            if last_line != result.reason:
                fields["error"] = last_line
        if max_rss_kb:
            fields["max_rss_kb"] = max_rss_kb
        if job_state == "pending" and outcome != Outcome.INTERRUPTED:
            fields["retry_in"] = f"{after.delay:.2f}s"
            if after.queued_behind is not None:
                budget = self.budget()
                fields["held_by"] = (f"restart budget ({budget.intensity} re-runs per {budget.period:g}s), "
                                     f"queued behind {after.queued_behind} other(s)")
        if job_state == "failed":
            name = "job_failed"
        else:
            name = {Outcome.FINISHED: "complete", Outcome.INTERRUPTED: "interrupted"}.get(outcome, "attempt_failed")
        level = logging.INFO if outcome in (Outcome.FINISHED, Outcome.INTERRUPTED) else logging.WARNING
        log.event(level, name, **fields)
        if outcome == Outcome.ERROR and result.error and job_state == "failed":
            log.log.warning("%s", result.error.rstrip())

    def hold_finals(self, attempts: list[Attempt]) -> bool:
        """Put the finals just received in the journal (one transaction) before
        they are acknowledged; False if that failed (a storage outage). The
        callbacks that ended meanwhile are recorded done in the same commit
        (group commit: no fsync of their own)."""
        if not attempts:
            return True
        held = False

        def write() -> None:
            nonlocal held
            finals = [(a.attempt_id, json.dumps(a.final, separators=(",", ":"))) for a in attempts]
            self.callbacks.commit_with(lambda done: self.journal().hold_finals(finals, done))
            held = True

        self.guarded(write, False)
        return held

    def take_checkpoint(self, job_id: int, number: int) -> bool:
        """The attempt's checkpoint left in the outbox, if any, into the
        journal; True if there was a file (removed with the attempt's end)."""
        path = checkpoint_outbox_path(str(self.paths.outbox), job_id, number)
        try:
            data = read_left_file(path, protocol.MAX_MESSAGE_BYTES)
        except UnusableFile as exc:
            quarantine.keep(self.paths.root, "outbox", b"", f"not taken as a checkpoint: {exc.strerror}",
                            path=path, job_id=job_id, attempt=number)
            return True  # (removed with the attempt's end)
        except OSError as exc:
            if exc.errno in SHORTAGE_ERRNOS:  # as for an outcome's file: not "none there", not known yet
                raise OutboxUnreadable(exc.errno, exc.strerror, path) from exc
            raise
        if data is None:
            return False
        longjobs.keep_checkpoint(self.journal(), self.paths, job_id, number, data)
        return True

    def read_outbox(self, job_id: int, number: int) -> dict[str, Any] | None:
        path = self.outbox_path(job_id, number)
        try:
            data = read_left_file(path, protocol.MAX_MESSAGE_BYTES)
        except UnusableFile as exc:
            quarantine.keep(self.paths.root, "outbox", b"", f"not taken as an outcome: {exc.strerror}",
                            path=path, job_id=job_id, attempt=number)
            return None
        except OSError as exc:
            if exc.errno in SHORTAGE_ERRNOS:  # not "no outcome there": not known yet
                raise OutboxUnreadable(exc.errno, exc.strerror, path) from exc
            return None
        if data is None:
            return None
        body = _final_body(data, job_id, number)
        if body is None:  # put aside before the file is removed with the attempt's end
            quarantine.keep(self.paths.root, "outbox", data, "not a valid outcome message of this attempt",
                            path=path, job_id=job_id, attempt=number)
        return body

    def held_final(self, a: OpenAttempt) -> dict[str, Any] | None:
        """The final message an earlier master acknowledged and kept in the journal."""
        if a.final is None:
            return None
        if not isinstance(a.final, str):  # a BLOB (or a number) another tool put there: not what a master holds
            record = a.final if isinstance(a.final, bytes) else repr(a.final)
            quarantine.keep(self.paths.root, "final", record, f"the final held in the store is not text (a "
                            f"{type(a.final).__name__}): the attempt ends as its process says", job=a.key,
                            attempt=a.n)
            return None
        body = _final_body(a.final.encode("utf-8", "surrogateescape"), a.job_id, a.n)
        if body is None:
            quarantine.keep(self.paths.root, "final", a.final, "the final held in the store is not a valid "
                            "outcome message of this attempt", job=a.key, attempt=a.n)
        return body

    def outbox_path(self, job_id: int, number: int) -> str:
        return f"{self.paths.outbox}/{job_id}.{number}.json"  # a str: no Path object per job

    def remove_outbox(self, job_id: int, number: int) -> None:
        longjobs.remove_left_file(self.outbox_path(job_id, number))


def _final_body(data: bytes, job_id: int, number: int) -> dict[str, Any] | None:
    """The body of a final message of attempt `number` of job `job_id`; None if it is not one."""
    message = protocol.decode(data)
    if (message is None or message.job != job_id or message.attempt != number
            or message.kind not in protocol.FINAL_KINDS):
        return None
    return message.body
