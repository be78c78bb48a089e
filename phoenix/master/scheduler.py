"""The scheduler: starts pending jobs through the one slot gate, each in a
child whose attempt is committed before it gets its order.

It is woken when a job may be waiting (a submit, an attempt's end, a slot
freed) and otherwise looks once a second, or when the next backoff ends."""

from __future__ import annotations

import logging
import os
from typing import Callable, Protocol

from phoenix import log
from phoenix.app import JobSpec
from phoenix.child import run as child
from phoenix.config import Config
from phoenix.linux.clock import Clock
from phoenix.master.attempts import Attempt, AttemptTable
from phoenix.master.metrics import Counters
from phoenix.master.spawner import WaitingChild
from phoenix.master.specs import JobSpecs
from phoenix.rules.leases import lease_times, orphan_after
from phoenix.rules.outcomes import Classified
from phoenix.rules.shortage import MAX_RETRY, ForkBackoff
from phoenix.rules.states import Outcome
from phoenix.store.base import Job, Store
from phoenix.store.outage import STORAGE_ERRORS, JournalOutage

SPAWN_SLICE = 0.25  # seconds of forking per turn of the loop before the other steps get a turn
PENDING_POLL = 1.0  # fallback look for jobs submitted without a wake-up
# Pending jobs read per turn, however many slots are free: a turn starts
# what SPAWN_SLICE allows (tens to a few hundred), and reading one row per
# free slot made each turn's read grow with the slots (10,000 rows, tens of
# ms, every quarter second of a 10,000-slot start). More are read next turn.
PENDING_BATCH = 256
CLAIM_REPLY_LOST = "its claim was never confirmed to the master (a reply lost to a store failure); it never started"


class ChildSource(Protocol):
    """Where waiting children come from (spawner.Spawner; phoenix.testing.FakeSpawner)."""

    def take(self, ahead: int = 0) -> WaitingChild: ...  # OSError: the master cannot fork now
    def give_back(self, waiting: WaitingChild) -> None: ...


class Records(Protocol):
    """The outcome recorder (recorder.OutcomeRecorder), for a claim that committed with its reply lost."""

    def record(self, job_id: int, key: str, target: str, attempt_id: int, number: int, result: Classified,
               max_rss_kb: int | None, pid: int | None, outbox: bool = True) -> None: ...


class Scheduler:
    def __init__(self, journal: Callable[[], Store], config: Callable[[], Config], generation: int,
                 output_dir: str, specs: JobSpecs, attempts: AttemptTable, free_slots: Callable[[], int],
                 shared_poll: Callable[[], float], spawner: ChildSource, outage: JournalOutage, recorder: Records,
                 start_callback: Callable[[int, int, int, str], None], watch: Callable[[Attempt, float], None],
                 counters: Counters, clock: Clock,
                 place: Callable[[int, int, int | None, JobSpec | None], str | None] = lambda *_: None) -> None:
        """`free_slots`: how many jobs may start now (0 while the slot gate
        is shut: a stop, a replacement, an outage, a lapsed lease).
        `shared_poll`: seconds between looks in a shared store, whose submits
        NOTIFY. `watch(attempt, now)`: the hang killer's first liveness check
        of an attempt started here. `place(attempt id, pid, start time, spec)`: the
        attempt's memory cgroup, the waiting child moved into it before it
        has its order (memory.Watchers.place); None: none."""
        self.journal = journal
        self.config = config
        self.generation = generation
        self.output_dir = output_dir
        self.specs = specs
        self.attempts = attempts
        self.free_slots = free_slots
        self.shared_poll = shared_poll
        self.spawner = spawner
        self.outage = outage
        self.recorder = recorder
        self.start_callback = start_callback
        self.watch = watch
        self.place = place
        self.counters = counters
        self.clock = clock
        self.maybe_pending = True  # a job may be waiting: look on the next turn
        self.next_poll = 0.0  # monotonic: look then even if nobody said so
        self.woken = False  # woken by a submit, an attempt's end or a recovery, not by the poll
        self.claims_in_doubt = False  # a claim failed: it may have committed with its reply lost
        self.fork_backoff = ForkBackoff()  # the master cannot fork now: its own back-off, not the jobs'

    def has_free_slot(self) -> bool:
        return self.free_slots() > 0

    def wake(self) -> None:
        self.maybe_pending = True
        self.woken = True

    def next_deadline(self, now: float) -> float:
        if not self.has_free_slot():
            return now + PENDING_POLL
        if self.fork_backoff.blocked(now):
            return self.fork_backoff.retry_at
        return now if self.maybe_pending else max(self.next_poll, now)

    def poll_if_due(self, now: float) -> None:
        if now >= self.next_poll:
            self.maybe_pending = True

    def spawn_pending_jobs(self) -> None:
        journal = self.journal()
        if not self.maybe_pending or not self.has_free_slot() or self.fork_backoff.blocked(self.clock.monotonic()):
            return
        self.maybe_pending = False
        if journal.shared:
            self.next_poll = self.clock.monotonic() + self.shared_poll()
            woken, self.woken = self.woken, False
            self.claim_jobs(woken)
            return
        self.next_poll = self.clock.monotonic() + PENDING_POLL
        jobs = journal.pending(min(self.free_slots(), PENDING_BATCH))
        slice_ends = self.clock.monotonic() + SPAWN_SLICE
        for index, job in enumerate(jobs):
            if not self.spawn(job, ahead=len(jobs) - index - 1):
                self.maybe_pending = True  # the rest stay pending until the back-off ends
                return
            if self.clock.monotonic() >= slice_ends:
                break  # the rest on the next turn, after reaping, timers and control requests
        if not self.has_free_slot():
            # Every slot taken: until one is freed (by an attempt's end, more
            # slots or a recovery, each of which wakes us) no job's due time matters.
            return
        if len(jobs):
            self.maybe_pending = True  # there may be more behind them: the next turn looks
            return
        due_in = journal.next_due_in()
        if due_in is not None and due_in > 0:
            self.next_poll = min(self.next_poll, self.clock.monotonic() + due_in)

    def claim_jobs(self, woken: bool) -> None:
        """Shared store: for each free slot, a waiting child, then one claim
        statement that records the job's attempt with that child's pid (see
        pgstore._CLAIM). The child gets its order only after the claim commits."""
        journal = self.journal()
        slice_ends = self.clock.monotonic() + SPAWN_SLICE
        started = False
        while self.has_free_slot():
            waiting = self.take_child()
            if waiting is None:  # the job stays pending, for us after the back-off or another master
                self.maybe_pending = True
                return
            try:
                claimed = journal.claim(self.generation, waiting.pid, waiting.start_time)
            except STORAGE_ERRORS as exc:
                self.spawner.give_back(waiting)  # it never got an order; reconcile_claims ends a committed claim
                self.claims_in_doubt = True
                self.outage.failed(exc, "claim")
                return
            if claimed is None:
                self.spawner.give_back(waiting)  # nothing due: it waits for the next job as the spare
                if woken or started:  # a job put back with a backoff (a re-run, a recovery) may be due sooner
                    due_in = journal.next_due_in()
                    if due_in is not None and due_in > 0:
                        self.next_poll = min(self.next_poll, self.clock.monotonic() + due_in)
                return
            job, attempt_id = claimed
            spec = self.specs.startable(job)
            if isinstance(spec, str):
                self.spawner.give_back(waiting)
                self.fail_claimed(job, spec)
                continue
            self.start(job, spec, waiting, attempt_id, job.attempts + 1)
            started = True
            if self.clock.monotonic() >= slice_ends:
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
        ours = {attempt.attempt_id for attempt in self.attempts.values()}
        for a in self.journal().open_attempts():
            if a.generation == self.generation and a.attempt_id not in ours:
                self.recorder.record(a.job_id, a.key, a.target, a.attempt_id, a.n,
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
        log.event(logging.ERROR, "job_failed", job=job.key, outcome="error", reason="cannot start", target=job.target)
        log.log.error("%s", error)
        callback_id = self.journal().fail_without_attempt(job.id, error)
        if callback_id is not None:
            self.start_callback(callback_id, job.id, 0, "on_failed")

    def take_child(self, ahead: int = 0) -> WaitingChild | None:
        """A child for the next job, or None when the master cannot fork one
        now (out of processes, memory or file descriptors): that is the
        master's shortage, not the job's, which stays pending and is charged
        nothing. Said once when it starts, once when it ends."""
        now = self.clock.monotonic()
        try:
            waiting = self.spawner.take(ahead)
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

    def spawn(self, job: Job, ahead: int = 0) -> bool:
        """Start `job` (or fail it if it cannot run); False if the master
        could not fork. `ahead`: jobs this turn means to start after it (their
        children are asked for now: spawner.take)."""
        spec = self.specs.startable(job)
        if isinstance(spec, str):
            self.fail_before_start(job, spec)
            return True
        waiting = self.take_child(ahead)
        if waiting is None:
            return False
        pid = waiting.pid
        try:
            attempt_id = self.journal().begin_attempt(job, self.generation, pid, waiting.start_time)
        except STORAGE_ERRORS as exc:
            # The job stays pending in the journal; the child, given no order,
            # exits without running it and is reaped as a stranger.
            os.close(waiting.order_fd)
            self.outage.failed(exc, "begin_attempt")
            return True
        self.start(job, spec, waiting, attempt_id, job.attempts + 1)
        return True

    def orphan_rule(self) -> tuple[float, float] | None:
        """With a shared store, (seconds without a master, kill grace) after
        which a child ends its own attempt: its master cannot, once dead, and
        another host recovers the job after the lease. None on SQLite, where
        only a new master of this state directory can run the job again, and
        adopts the child instead."""
        config = self.config()
        if not self.journal().shared:
            return None
        times = lease_times(config.lease_ttl, config.kill_grace)
        return orphan_after(times, config.heartbeat_interval), config.kill_grace

    def start(self, job: Job, spec: JobSpec, waiting: WaitingChild, attempt_id: int, number: int) -> None:
        """The attempt is committed: give the child its order, and watch it."""
        config = self.config()
        pid = waiting.pid
        # Its memory cgroup, if its job has a limit: entered before any code of the job runs.
        cgroup = self.place(attempt_id, pid, waiting.start_time, spec)
        # Where the job resumes: its checkpoint came with the job (claim, pending).
        delivered = waiting.send(child.order(job.id, job.key, number, job.target, job.params,
                                             config.heartbeat_interval, config.outcome_delivery_timeout,
                                             attempt_id, self.orphan_rule(),
                                             (self.output_dir, config.job_output_max_bytes), job.checkpoint))
        now = self.clock.monotonic()
        # A child that never saw its job (it died waiting): not the job's failure.
        attempt = Attempt(attempt_id, job.id, job.key, job.target, number, pid, spec, now, now, now,
                          failures=job.failures, interrupted=not delivered, cgroup=cgroup,
                          kill_detail=None if delivered else "its child died before it received the job")
        self.attempts.add(attempt)
        self.watch(attempt, now)
        self.counters.spawned += 1
        log.event(logging.INFO, "spawn", pid=pid, job=job.key, attempt=number, target=job.target)
