"""The scheduler in-process, on a fake clock, a fake spawner (real order
pipes, no fork) and a real SQLite journal: jobs start one per free slot,
each child gets its own job's order after its attempt is committed; a job
that may not start fails without an attempt; a fork the system refuses
leaves the job pending, charged nothing, until the back-off ends."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phoenix.app import App
from phoenix.child.run import ORDER_HEADER
from phoenix.config import Config
from phoenix.master.attempts import Attempt, AttemptTable
from phoenix.master.metrics import Counters
from phoenix.master.scheduler import PENDING_BATCH, PENDING_POLL, Scheduler
from phoenix.master.specs import JobSpecs
from phoenix.rules.shortage import FIRST_RETRY
from phoenix.store.outage import JournalOutage
from phoenix.store.sqlite import Journal
from phoenix.testing import FakeClock, FakeSpawner

NOOP = "tests.apps.jobs:noop"


class Recorder:
    def __init__(self) -> None:
        self.recorded: list[tuple[Any, ...]] = []

    def record(self, *args: Any, **kwargs: Any) -> None:
        self.recorded.append(args)


class Scheduling:
    """A scheduler and what it is handed."""

    def __init__(self, journal: Journal, tmp_path: Path, slots: int = 2) -> None:
        self.clock = FakeClock()
        self.journal = journal
        self.config = Config(heartbeat_timeout=5.0, retries=3)
        self.attempts = AttemptTable()
        self.slots = slots
        self.spawner = FakeSpawner()
        self.outage = JournalOutage(str(tmp_path / "journal.db"), self.clock)
        self.counters = Counters()
        self.callbacks: list[tuple[int, int, int, str]] = []
        self.watched: list[tuple[int, float]] = []
        self.scheduler = Scheduler(
            lambda: self.journal, lambda: self.config, 7, str(tmp_path / "output"), JobSpecs(App("t"),
                                                                                              lambda: self.config),
            self.attempts, self.free_slots, lambda: 2.0, self.spawner, self.outage, Recorder(),
            lambda *callback: self.callbacks.append(callback), self.watch, self.counters, self.clock)

    def free_slots(self) -> int:
        return self.slots - len(self.attempts)

    def watch(self, attempt: Attempt, now: float) -> None:
        self.watched.append((attempt.pid, now))

    def order(self, pid: int) -> dict[str, Any]:
        data = self.spawner.order_for(pid)
        assert int.from_bytes(data[:ORDER_HEADER], "big") == len(data) - ORDER_HEADER
        order: dict[str, Any] = json.loads(data[ORDER_HEADER:])
        return order

    def state(self, key: str) -> str:
        return str(self.journal.db.execute("SELECT state FROM jobs WHERE key = ?", (key,)).fetchone()[0])


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.db")
    yield journal
    journal.close()


@pytest.fixture
def parts(journal: Journal, tmp_path: Path) -> Iterator[Scheduling]:
    parts = Scheduling(journal, tmp_path)
    yield parts
    parts.spawner.close()


def test_pending_jobs_start_one_per_free_slot_each_child_with_its_own_order(parts: Scheduling) -> None:
    for key in ("a", "b", "c"):
        parts.journal.submit(NOOP, "{}", key)
    parts.scheduler.spawn_pending_jobs()
    started = sorted(parts.attempts.values(), key=lambda a: a.key)
    assert [(a.key, a.number) for a in started] == [("a", 1), ("b", 1)]
    assert [parts.state(key) for key in ("a", "b", "c")] == ["running", "running", "pending"]
    for attempt in started:
        order = parts.order(attempt.pid)
        assert (order["key"], order["attempt"], order["attempt_id"]) == (attempt.key, 1, attempt.attempt_id)
    assert parts.watched == [(a.pid, parts.clock.monotonic()) for a in parts.spawner.taken]
    assert parts.counters.spawned == 2
    parts.scheduler.spawn_pending_jobs()  # no free slot: nothing more starts
    assert len(parts.attempts) == 2 and parts.state("c") == "pending"


def test_a_job_whose_target_cannot_run_fails_without_an_attempt(parts: Scheduling) -> None:
    parts.journal.submit("tests.apps.jobs:no_such_job", "{}", "bad")
    parts.scheduler.spawn_pending_jobs()
    assert not parts.attempts and not parts.spawner.taken  # no child taken for it
    assert parts.state("bad") == "failed"
    assert [(job, number, kind) for _id, job, number, kind in parts.callbacks] == [(1, 0, "on_failed")]


def test_a_job_past_its_retries_fails_without_an_attempt_on_both_paths(parts: Scheduling) -> None:
    # Failures recorded by a master that had no app loaded (its policy was not known).
    parts.journal.submit(NOOP, "{}", "spent")
    parts.journal.db.execute("UPDATE jobs SET failures = 4 WHERE key = 'spent'")
    job = parts.journal.pending(1)[0]
    assert parts.scheduler.specs.startable(job) == "job 'spent' failed 4 time(s); its policy allows 3 retries"
    parts.scheduler.spawn_pending_jobs()
    assert parts.state("spent") == "failed" and not parts.attempts


def test_a_refused_fork_leaves_the_job_pending_until_the_back_off_ends(parts: Scheduling) -> None:
    parts.journal.submit(NOOP, "{}", "a")
    parts.spawner.fail_with = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    parts.scheduler.spawn_pending_jobs()
    assert not parts.attempts and parts.state("a") == "pending"
    failed_at = parts.clock.monotonic()
    assert parts.scheduler.next_deadline(failed_at) == failed_at + FIRST_RETRY
    parts.spawner.fail_with = None
    parts.clock.advance(FIRST_RETRY * 0.999)
    parts.scheduler.spawn_pending_jobs()  # still backing off: no fork tried
    assert not parts.spawner.taken and parts.state("a") == "pending"
    parts.clock.advance(FIRST_RETRY * 0.001)
    parts.scheduler.spawn_pending_jobs()
    assert [a.key for a in parts.attempts.values()] == ["a"]
    row = parts.journal.db.execute("SELECT attempts, failures FROM jobs WHERE key = 'a'").fetchone()
    assert tuple(row) == (1, 0)  # the refused forks cost the job nothing


def test_a_child_that_died_waiting_makes_an_interrupted_attempt(parts: Scheduling) -> None:
    parts.journal.submit(NOOP, "{}", "a")
    parts.spawner.dead_on_arrival = True
    parts.scheduler.spawn_pending_jobs()
    [attempt] = parts.attempts.values()
    assert attempt.interrupted and attempt.kill_detail == "its child died before it received the job"


def test_with_nothing_pending_it_looks_again_after_the_poll_interval(parts: Scheduling) -> None:
    parts.scheduler.spawn_pending_jobs()
    looked = parts.clock.monotonic()
    assert not parts.scheduler.maybe_pending
    assert parts.scheduler.next_deadline(looked) == looked + PENDING_POLL
    parts.clock.advance(PENDING_POLL - 0.001)
    parts.scheduler.poll_if_due(parts.clock.monotonic())
    assert not parts.scheduler.maybe_pending
    parts.clock.advance(0.001)
    parts.scheduler.poll_if_due(parts.clock.monotonic())
    assert parts.scheduler.maybe_pending
    parts.scheduler.wake()  # a submit says so at once
    assert parts.scheduler.next_deadline(parts.clock.monotonic()) == parts.clock.monotonic()


def test_a_burst_of_starts_tells_the_spawner_how_many_children_it_will_take_next(journal: Journal,
                                                                                 tmp_path: Path) -> None:
    # The spawner asks the fork server for that many at once (spawner.FORKS_AHEAD), so that
    # one start's commit overlaps the next children's forks rather than waiting for each.
    parts = Scheduling(journal, tmp_path, slots=5)
    try:
        for n in range(7):
            journal.submit(NOOP, "{}", f"job-{n}")
        parts.scheduler.spawn_pending_jobs()
        assert parts.spawner.asked_ahead == [4, 3, 2, 1, 0]  # 5 free slots: 5 of the 7 jobs
        assert len(parts.attempts) == 5
    finally:
        parts.spawner.close()


def test_a_turn_reads_a_bounded_batch_of_pending_jobs_however_many_slots_are_free(journal: Journal,
                                                                                  tmp_path: Path) -> None:
    # One row per free slot made each turn's read grow with the slots (10,000 at a 10,000-slot start).
    parts = Scheduling(journal, tmp_path, slots=PENDING_BATCH * 2 + 10)
    try:
        journal.submit_many((NOOP, "{}", f"job-{n}") for n in range(PENDING_BATCH * 2 + 10))
        parts.scheduler.spawn_pending_jobs()  # (the fake clock stands still: the slice never ends early)
        assert len(parts.attempts) == PENDING_BATCH
        assert parts.scheduler.maybe_pending  # more may wait: the next turn looks
        parts.scheduler.spawn_pending_jobs()
        parts.scheduler.spawn_pending_jobs()
        assert len(parts.attempts) == PENDING_BATCH * 2 + 10
    finally:
        parts.spawner.close()
