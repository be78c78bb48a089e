"""The scheduler: starts pending jobs through the one slot gate, each in a
child whose attempt is committed before it gets its order.

It is woken when a job may be waiting (a submit, an attempt's end, a slot
freed) and otherwise looks once a second, or when the next backoff ends."""

from __future__ import annotations

import logging
import os
import time
from typing import Protocol

from phoenix import log
from phoenix.app import AppError, JobSpec, decode_params
from phoenix.child import run as child
from phoenix.config import Config
from phoenix.linux.paths import StatePaths
from phoenix.master.attempts import Attempt
from phoenix.master.metrics import Counters
from phoenix.master.recorder import OutcomeRecorder
from phoenix.master.spawner import Spawner, WaitingChild
from phoenix.master.timers import TimerHeap
from phoenix.rules.leases import lease_times, orphan_after
from phoenix.rules.liveness import verdict
from phoenix.rules.outcomes import Classified
from phoenix.rules.policy import may_run
from phoenix.rules.shortage import MAX_RETRY, ForkBackoff
from phoenix.rules.states import Outcome, TimerKind
from phoenix.store.base import Job, Store
from phoenix.store.outage import STORAGE_ERRORS, JournalOutage

SPAWN_SLICE = 0.25  # seconds of forking per turn of the loop before the other steps get a turn
PENDING_POLL = 1.0  # fallback look for jobs submitted without a wake-up
CLAIM_REPLY_LOST = "its claim was never confirmed to the master (a reply lost to a store failure); it never started"


class SchedulerHost(Protocol):
    paths: StatePaths
    journal: Store
    config: Config
    generation: int
    slots: int
    children: dict[int, Attempt]
    timers: TimerHeap
    counters: Counters
    spawner: Spawner
    outage: JournalOutage
    recorder: OutcomeRecorder

    def has_free_slot(self) -> bool: ...
    def shared_poll(self) -> float: ...  # seconds between looks in a shared store, whose submits NOTIFY
    def spec_for(self, target: str) -> JobSpec: ...
    def start_callback(self, callback_id: int, job_id: int, number: int, kind: str) -> None: ...


class Scheduler:
    def __init__(self, host: SchedulerHost) -> None:
        self.host = host
        self.maybe_pending = True  # a job may be waiting: look on the next turn
        self.next_poll = 0.0  # monotonic: look then even if nobody said so
        self.woken = False  # woken by a submit, an attempt's end or a recovery, not by the poll
        self.claims_in_doubt = False  # a claim failed: it may have committed with its reply lost
        self.fork_backoff = ForkBackoff()  # the master cannot fork now: its own back-off, not the jobs'

    def wake(self) -> None:
        self.maybe_pending = True
        self.woken = True

    def next_deadline(self, now: float) -> float:
        if not self.host.has_free_slot():
            return now + PENDING_POLL
        if self.fork_backoff.blocked(now):
            return self.fork_backoff.retry_at
        return now if self.maybe_pending else max(self.next_poll, now)

    def poll_if_due(self, now: float) -> None:
        if now >= self.next_poll:
            self.maybe_pending = True

    def spawn_pending_jobs(self) -> None:
        h = self.host
        if not self.maybe_pending or not h.has_free_slot() or self.fork_backoff.blocked(time.monotonic()):
            return
        self.maybe_pending = False
        if h.journal.shared:
            self.next_poll = time.monotonic() + h.shared_poll()
            woken, self.woken = self.woken, False
            self.claim_jobs(woken)
            return
        self.next_poll = time.monotonic() + PENDING_POLL
        jobs = h.journal.pending(h.slots - len(h.children))
        slice_ends = time.monotonic() + SPAWN_SLICE
        for job in jobs:
            if not self.spawn(job):
                self.maybe_pending = True  # the rest stay pending until the back-off ends
                return
            if time.monotonic() >= slice_ends:
                break  # the rest on the next turn, after reaping, timers and control requests
        if not h.has_free_slot():
            # Every slot taken: until one is freed (by an attempt's end, more
            # slots or a recovery, each of which wakes us) no job's due time matters.
            return
        if len(jobs):
            self.maybe_pending = True  # there may be more behind them: the next turn looks
            return
        due_in = h.journal.next_due_in()
        if due_in is not None and due_in > 0:
            self.next_poll = min(self.next_poll, time.monotonic() + due_in)

    def claim_jobs(self, woken: bool) -> None:
        """Shared store: for each free slot, a waiting child, then one claim
        statement that records the job's attempt with that child's pid (see
        pgstore._CLAIM). The child gets its order only after the claim commits."""
        h = self.host
        slice_ends = time.monotonic() + SPAWN_SLICE
        started = False
        while h.has_free_slot():
            waiting = self.take_child()
            if waiting is None:  # the job stays pending, for us after the back-off or another master
                self.maybe_pending = True
                return
            try:
                claimed = h.journal.claim(h.generation, waiting.pid, waiting.start_time)
            except STORAGE_ERRORS as exc:
                h.spawner.give_back(waiting)  # it never got an order; reconcile_claims ends a committed claim
                self.claims_in_doubt = True
                h.outage.failed(exc, "claim")
                return
            if claimed is None:
                h.spawner.give_back(waiting)  # nothing due: it waits for the next job as the spare
                if woken or started:  # a job put back with a backoff (a re-run, a recovery) may be due sooner
                    due_in = h.journal.next_due_in()
                    if due_in is not None and due_in > 0:
                        self.next_poll = min(self.next_poll, time.monotonic() + due_in)
                return
            job, attempt_id = claimed
            try:
                spec = h.spec_for(job.target)
                decode_params(job.params)
            except AppError as exc:
                h.spawner.give_back(waiting)
                self.fail_claimed(job, str(exc))
                continue
            retries = spec.retries if spec.retries is not None else h.config.retries
            if not may_run(job.failures, retries):
                h.spawner.give_back(waiting)
                self.fail_claimed(job, f"job {job.key!r} failed {job.failures} time(s); its policy allows "
                                       f"{retries} retries")
                continue
            self.start(job, spec, waiting, attempt_id, job.attempts + 1)
            started = True
            if time.monotonic() >= slice_ends:
                self.maybe_pending = True  # the rest on the next turn
                return
        self.maybe_pending = False

    def reconcile_claims(self) -> None:
        """Once the store answers again after a failed claim: the claim may have
        committed though its reply was lost (the connection broke after the
        commit). Its attempt is this master's, of this generation, with no
        child here (the waiting child never got an order): it is ended as
        interrupted, not the job's failure, and the job is pending again at
        once. Attempts are told apart by id: the waiting child went back to
        be the spare, and may run another attempt by now."""
        if not self.claims_in_doubt:
            return
        h = self.host
        ours = {attempt.attempt_id for attempt in h.children.values()}
        for a in h.journal.open_attempts():
            if a.generation == h.generation and a.attempt_id not in ours:
                h.recorder.record(a.job_id, a.key, a.target, a.attempt_id, a.n,
                                  Classified(Outcome.INTERRUPTED, CLAIM_REPLY_LOST, CLAIM_REPLY_LOST, None),
                                  None, a.pid, outbox=False)
        self.claims_in_doubt = False

    def fail_claimed(self, job: Job, error: str) -> None:
        """A claimed job that cannot start here: until its failure is recorded
        (a storage error leaves it running with no child), the claim is in doubt."""
        self.claims_in_doubt = True
        self.fail_before_start(job, error)
        self.claims_in_doubt = False  # (a claim in doubt before this one stopped every claim until reconciled)

    def fail_before_start(self, job: Job, error: str) -> None:
        h = self.host
        log.event(logging.ERROR, "job_failed", job=job.key, outcome="error", reason="cannot start", target=job.target)
        log.log.error("%s", error)
        callback_id = h.journal.fail_without_attempt(job.id, error)
        if callback_id is not None:
            h.start_callback(callback_id, job.id, 0, "on_failed")

    def take_child(self) -> WaitingChild | None:
        """A child for the next job, or None when the master cannot fork one
        now (out of processes, memory or file descriptors): that is the
        master's shortage, not the job's, which stays pending and is charged
        nothing. Said once when it starts, once when it ends."""
        now = time.monotonic()
        try:
            waiting = self.host.spawner.take()
        except OSError as exc:
            error = exc.strerror or str(exc)
            if self.fork_backoff.failed(now):
                log.event(logging.ERROR, "fork_failed", error=error,
                          effect=f"jobs stay pending and are charged no attempt; the master tries again, "
                                 f"backing off up to {MAX_RETRY:g}s, until it can fork")
            return None
        ended = self.fork_backoff.succeeded(now)
        if ended is not None:
            log.event(logging.WARNING, "fork_recovered", after=f"{ended[0]:.2f}s", failed_forks=ended[1])
        return waiting

    def spawn(self, job: Job) -> bool:
        """Start `job` (or fail it if it cannot run); False if the master could not fork."""
        h = self.host
        try:
            spec = h.spec_for(job.target)
            decode_params(job.params)  # bad JSON fails the job here, not in a child
        except AppError as exc:
            self.fail_before_start(job, str(exc))
            return True
        retries = spec.retries if spec.retries is not None else h.config.retries
        if not may_run(job.failures, retries):
            # Its failures were recorded by a master that had no app loaded.
            self.fail_before_start(job, f"job {job.key!r} failed {job.failures} time(s); its policy allows "
                                        f"{retries} retries")
            return True
        waiting = self.take_child()
        if waiting is None:
            return False
        pid = waiting.pid
        try:
            attempt_id = h.journal.begin_attempt(job, h.generation, pid, waiting.start_time)
        except STORAGE_ERRORS as exc:
            # The job stays pending in the journal; the child, given no order,
            # exits without running it and is reaped as a stranger.
            os.close(waiting.order_fd)
            h.outage.failed(exc, "begin_attempt")
            return True
        self.start(job, spec, waiting, attempt_id, job.attempts + 1)
        return True

    def orphan_rule(self) -> tuple[float, float] | None:
        """With a shared store, (seconds without a master, kill grace) after
        which a child ends its own attempt: its master cannot, once dead, and
        another host recovers the job after the lease. None on SQLite, where
        only a new master of this state directory can run the job again, and
        adopts the child instead."""
        h = self.host
        if not h.journal.shared:
            return None
        times = lease_times(h.config.lease_ttl, h.config.kill_grace)
        return orphan_after(times, h.config.heartbeat_interval), h.config.kill_grace

    def start(self, job: Job, spec: JobSpec, waiting: WaitingChild, attempt_id: int, number: int) -> None:
        """The attempt is committed: give the child its order, and watch it."""
        h = self.host
        pid = waiting.pid
        delivered = waiting.send(child.order(job.id, job.key, number, job.target, job.params,
                                             h.config.heartbeat_interval, h.config.outcome_delivery_timeout,
                                             attempt_id, self.orphan_rule(),
                                             (str(h.paths.output), h.config.job_output_max_bytes)))
        now = time.monotonic()
        attempt = Attempt(attempt_id, job.id, job.key, job.target, number, pid, spec, now, now, now,
                          failures=job.failures)
        if not delivered:  # the child died waiting and never saw its job: not the job's failure
            attempt.interrupted = True
            attempt.kill_detail = "its child died before it received the job"
        h.children[pid] = attempt
        first_check = verdict(attempt.limits(h.config.heartbeat_timeout), last_beat=now, last_progress=now,
                              started=now, now=now).next_check
        h.timers.push(first_check, TimerKind.CHECK, pid, attempt_id)
        h.counters.spawned += 1
        log.event(logging.INFO, "spawn", pid=pid, job=job.key, attempt=number, target=job.target)
