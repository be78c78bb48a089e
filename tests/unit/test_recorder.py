"""The outcome recorder in-process, on a fake clock and a real SQLite
journal: each way an attempt ends is recorded once, with the outcome its
evidence says (its final message, its outbox file, a kill, its exit
status), and its job goes where its policy says (run again with a backoff,
failed with on_failed owed, finished). The attempt's process is a real
child in its own group: the recorder ends the group, as it does a job's."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from phoenix.app import App
from phoenix.config import Config
from phoenix.linux.paths import StatePaths
from phoenix.master.attempts import Attempt
from phoenix.master.metrics import Counters
from phoenix.master.recorder import LOST_UNWATCHED, OutcomeRecorder
from phoenix.master.specs import JobSpecs
from phoenix.rules.policy import RestartBudget
from phoenix.rules.states import KillReason
from phoenix.store.sqlite import Journal
from phoenix.testing import FakeClock
from phoenix.wire import heartbeat as protocol

NOOP = "tests.apps.jobs:noop"  # the app's default retries (3)
EXIT3 = "tests.apps.jobs:exit3"  # retries=0


class Callbacks:
    def __init__(self) -> None:
        self.started: list[tuple[int, int, int, str]] = []

    def owes(self, kind: str) -> bool:
        return True

    def start(self, callback_id: int, job_id: int, number: int, kind: str) -> None:
        self.started.append((callback_id, job_id, number, kind))

    def commit_with(self, commit: Callable[[list[tuple[int, str | None]]], list[bool | None]]) -> None:
        commit([])


class Recording:
    def __init__(self, journal: Journal, paths: StatePaths) -> None:
        self.clock = FakeClock()
        self.journal = journal
        self.paths = paths
        self.config = Config(retries=3, backoff_base=0.5, backoff_cap=60.0)
        self.budget = RestartBudget(100, 10.0)
        self.counters = Counters()
        self.callbacks = Callbacks()
        self.woken = 0
        self.recorder = OutcomeRecorder(lambda: self.journal, lambda: self.config, lambda: self.budget,
                                        JobSpecs(App("t"), lambda: self.config), paths, self.counters, self.clock,
                                        self.guarded, self.callbacks, lambda: False, self.wake)

    def guarded(self, operation: Callable[[], Any], retry: bool) -> None:
        operation()

    def wake(self) -> None:
        self.woken += 1

    def begin(self, target: str, pid: int, key: str = "k") -> Attempt:
        """A job of `target` running in the process `pid`, as the scheduler starts one."""
        self.journal.submit(target, "{}", key)
        job = next(job for job in self.journal.pending(10) if job.key == key)
        attempt_id = self.journal.begin_attempt(job, 1, pid, None)
        now = self.clock.monotonic()
        return Attempt(attempt_id, job.id, key, target, 1, pid, None, now, now, now, failures=job.failures)

    def job(self, key: str = "k") -> dict[str, Any]:
        row = self.journal.job_by_key(key)
        assert row is not None
        return row

    def attempt_row(self, attempt: Attempt) -> tuple[Any, ...]:
        return tuple(self.journal.db.execute("SELECT outcome, reason FROM attempts WHERE id = ?",
                                             (attempt.attempt_id,)).fetchone())


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Recording]:
    paths = StatePaths(str(tmp_path / "state"))
    paths.ensure()
    journal = Journal(paths.journal)
    yield Recording(journal, paths)
    journal.close()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_final_message_records_the_job_finished_and_ends_its_group(
        parts: Recording, child: subprocess.Popen[bytes]) -> None:
    attempt = parts.begin(NOOP, child.pid)
    attempt.final, attempt.final_held = {protocol.KIND: "finished", protocol.RESULT: {"n": 1}}, True
    parts.recorder.conclude(attempt, 0, 1234)
    assert child.wait(timeout=5) == -signal.SIGKILL  # whatever of the job's group still ran
    job = parts.job()
    assert (job["state"], job["outcome"], job["result"]) == ("finished", "finished", '{"n": 1}')
    assert parts.attempt_row(attempt) == ("finished", None)
    assert parts.counters.attempts == {"finished": 1} and parts.woken == 1
    assert [kind for *_ids, kind in parts.callbacks.started] == ["on_finished"]


def test_a_killed_hang_goes_back_to_pending_with_a_backoff_and_one_failure(
        parts: Recording, child: subprocess.Popen[bytes]) -> None:
    attempt = parts.begin(NOOP, child.pid)
    attempt.kill_reason, attempt.kill_detail = KillReason.HEARTBEAT_TIMEOUT, "heartbeat_timeout: 5.00 s"
    parts.recorder.conclude(attempt, signal.SIGKILL, None)  # a wait status: killed by signal 9
    job = parts.job()
    assert (job["state"], job["outcome"], job["failures"]) == ("pending", "killed", 1)
    assert job["error"] == "heartbeat_timeout: 5.00 s; ended by SIGKILL"
    assert list(parts.budget.recent) == [parts.clock.monotonic()]  # its re-run booked at this (fake) moment
    assert parts.callbacks.started == []


def test_an_exit_with_no_retries_left_fails_the_job_and_owes_on_failed(
        parts: Recording, child: subprocess.Popen[bytes]) -> None:
    attempt = parts.begin(EXIT3, child.pid)
    parts.recorder.conclude(attempt, 3 << 8, None)  # exit code 3
    job = parts.job()
    assert (job["state"], job["outcome"], job["error"]) == ("failed", "exited", "exit code 3")
    assert [(number, kind) for _cb, _job, number, kind in parts.callbacks.started] == [(1, "on_failed")]


def test_a_stopped_attempt_is_interrupted_and_charged_nothing(
        parts: Recording, child: subprocess.Popen[bytes]) -> None:
    attempt = parts.begin(NOOP, child.pid)
    attempt.interrupted = True
    parts.recorder.conclude(attempt, signal.SIGTERM, None)
    job = parts.job()
    assert (job["state"], job["outcome"], job["failures"]) == ("pending", "interrupted", 0)


def test_an_outcome_in_the_outbox_is_recorded_then_its_file_removed(
        parts: Recording, child: subprocess.Popen[bytes]) -> None:
    attempt = parts.begin(NOOP, child.pid)
    outbox = Path(parts.recorder.outbox_path(attempt.job_id, 1))
    outbox.write_bytes(protocol.encode(attempt.job_id, 1, "finished", 9, 0, result=[1, 2]))
    parts.recorder.conclude(attempt, None, None)  # an adopted child: no exit status
    assert (parts.job()["outcome"], parts.job()["result"]) == ("finished", "[1, 2]")
    assert not outbox.exists()


def test_an_attempt_whose_process_is_gone_with_no_outcome_is_lost(
        parts: Recording, child: subprocess.Popen[bytes]) -> None:
    attempt = parts.begin(NOOP, child.pid)
    [open_attempt] = parts.journal.open_attempts()
    parts.recorder.conclude_without_process(open_attempt, LOST_UNWATCHED)
    job = parts.job()
    assert (job["state"], job["outcome"], job["failures"]) == ("pending", "lost", 1)
    assert parts.attempt_row(attempt) == ("lost", LOST_UNWATCHED)


def test_an_outcome_is_recorded_once(parts: Recording, child: subprocess.Popen[bytes]) -> None:
    attempt = parts.begin(EXIT3, child.pid)
    parts.recorder.conclude(attempt, 3 << 8, None)
    parts.recorder.conclude(attempt, 3 << 8, None)  # a second report of the same end (a handover)
    assert parts.counters.attempts == {"exited": 1} and len(parts.callbacks.started) == 1
