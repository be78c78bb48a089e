"""The settler in-process, on a fake clock and a real SQLite journal.

A callback that ran, whose `done` the store has not taken yet (an outage;
the write waits to be replayed), is never started again by a look for owed
callbacks (a lease renewal, the store's return): on the shared store, a
storm of killed sessions ran one callback 4 times. A callback that overruns
callback_timeout is recorded as timed out at that fake moment, not before."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from phoenix.app import App
from phoenix.config import Config
from phoenix.master.callbacks import CallbackRunner
from phoenix.master.metrics import Counters
from phoenix.master.settler import DONE_GROUP_WINDOW, CallbackSettler
from phoenix.store.sqlite import Journal
from phoenix.testing import FakeClock


def owe_callback(journal: Journal, kind: str = "on_finished", key: str = "k") -> int:
    """A job whose attempt ended and owes a callback of `kind`: the callback's id."""
    journal.submit("m:f", "{}", key)
    job = journal.pending(1)[0]
    attempt_id = journal.begin_attempt(job, 1, None, None)
    finished = kind == "on_finished"
    _recorded, callback_id = journal.end_attempt(
        attempt_id, job.id, outcome="finished" if finished else "error", reason=None,
        error=None if finished else "boom", result_json="1" if finished else None, max_rss_kb=None,
        job_state="finished" if finished else "failed", counts_as_failure=not finished, callback=kind, attempt_n=1)
    assert callback_id is not None
    return callback_id


class Settling:
    def __init__(self, journal: Journal, app: App) -> None:
        self.clock = FakeClock()
        self.journal = journal
        self.config = Config(callback_timeout=30.0)
        self.runner = CallbackRunner(1, self.clock)
        self.counters = Counters()
        self.replays: list[Callable[[], Any]] = []
        self.fail_writes = False
        self.writes = 0
        self.settler = CallbackSettler(app, lambda: self.journal, self.runner, lambda: self.config, self.counters,
                                       self.clock, self.guarded)

    def guarded(self, operation: Callable[[], Any], retry: bool) -> None:
        self.writes += 1
        if self.fail_writes:  # as an outage keeps a write to replay
            self.replays.append(operation)
            return
        operation()

    def owed(self) -> list[int]:
        return [callback_id for callback_id, *_ in self.journal.owed_callbacks()]

    def close(self) -> None:
        self.runner.shutdown()

    def take_owed_batch_callbacks(self) -> list[tuple[int, int, int, str]]:
        return []


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.db")
    yield journal
    journal.close()


def wait_finished(runner: CallbackRunner) -> None:
    for running in list(runner.running.values()):
        running.future.result(timeout=5)


def test_a_callback_runs_once_and_is_recorded_done(journal: Journal) -> None:
    app, calls = App("t"), []
    app.on_finished(lambda job, result: calls.append((job.key, result)))
    callback_id = owe_callback(journal)
    parts = Settling(journal, app)
    try:
        parts.settler.run_owed()
        wait_finished(parts.runner)
        parts.settler.settle(flush=True)
        assert calls == [("k", 1)] and parts.owed() == []
        parts.settler.run_owed()
        assert callback_id not in parts.runner.running and calls == [("k", 1)]
    finally:
        parts.close()


def test_a_callback_whose_done_waits_for_the_store_is_not_run_again(journal: Journal) -> None:
    app, calls = App("t"), []
    app.on_finished(lambda job, result: calls.append(job.key))
    callback_id = owe_callback(journal)
    parts = Settling(journal, app)
    try:
        parts.settler.run_owed()
        wait_finished(parts.runner)
        parts.fail_writes = True
        parts.settler.settle(flush=True)  # it ran; its done waits to be replayed
        assert parts.owed() == [callback_id] and len(parts.replays) == 1
        parts.settler.run_owed()  # a lease renewal looks for owed callbacks: still owed in the store
        assert not parts.runner.running and calls == ["k"]  # not started again
        parts.fail_writes = False
        parts.replays.pop()()  # the store is back: the write is replayed
        assert parts.owed() == []
    finally:
        parts.close()


def test_callbacks_done_ride_along_in_the_next_durable_commit(journal: Journal) -> None:
    """Group commit: callbacks that ended wait (still owed in the journal,
    never started again) for the master's next durable commit, the finals it
    holds, and are marked done in that very transaction."""
    app, calls = App("t"), []
    app.on_finished(lambda job, result: calls.append(job.key))
    owed = [owe_callback(journal, key=key) for key in ("first", "second")]
    journal.submit("m:f", "{}", "running")
    attempt_id = journal.begin_attempt(journal.pending(1)[0], 1, None, None)
    parts = Settling(journal, app)
    try:
        parts.settler.run_owed()
        wait_finished(parts.runner)
        parts.settler.settle()
        assert parts.owed() == owed and parts.writes == 0  # waiting for a commit to ride along in
        assert parts.settler.holds_done()  # (a replacement waits for them)
        parts.settler.run_owed()  # still owed in the journal: not started again
        assert not parts.runner.running and sorted(calls) == ["first", "second"]
        parts.settler.commit_with(lambda done: journal.hold_finals([(attempt_id, "{}")], done))
        assert parts.owed() == [] and parts.writes == 0  # in the finals' commit: no write of their own
        assert [a.final for a in journal.open_attempts()] == ["{}"]
        assert not parts.settler.holds_done() and parts.settler.next_deadline() is None
    finally:
        parts.close()


def test_a_group_no_commit_took_is_committed_at_the_windows_end(journal: Journal) -> None:
    app = App("t")
    app.on_finished(lambda job, result: None)
    owed = [owe_callback(journal, key=key) for key in ("first", "second")]
    parts = Settling(journal, app)
    try:
        parts.settler.run_owed()
        wait_finished(parts.runner)
        parts.settler.settle()
        assert parts.settler.next_deadline() == pytest.approx(parts.clock.monotonic() + DONE_GROUP_WINDOW)
        parts.clock.advance(DONE_GROUP_WINDOW * 0.99)
        parts.settler.settle()
        assert parts.owed() == owed and parts.writes == 0
        parts.clock.advance(DONE_GROUP_WINDOW * 0.01)
        parts.settler.settle()
        assert parts.owed() == [] and parts.writes == 1  # both in one commit
    finally:
        parts.close()


def test_a_stop_commits_the_waiting_group_at_once(journal: Journal) -> None:
    app = App("t")
    app.on_finished(lambda job, result: None)
    owe_callback(journal)
    parts = Settling(journal, app)
    try:
        parts.settler.run_owed()
        wait_finished(parts.runner)
        parts.settler.settle()
        assert len(parts.owed()) == 1  # within the window
        parts.settler.settle(flush=True)  # as Master.close does
        assert parts.owed() == [] and not parts.settler.holds_done()
    finally:
        parts.close()


def test_a_failed_commit_leaves_the_group_waiting(journal: Journal) -> None:
    """The finals' commit failed (an outage): the done records were not
    written with it, and are committed on their own at the window's end."""
    app = App("t")
    app.on_finished(lambda job, result: None)
    callback_id = owe_callback(journal)
    parts = Settling(journal, app)
    try:
        parts.settler.run_owed()
        wait_finished(parts.runner)
        parts.settler.settle()

        def failing(done: list[tuple[int, str | None]]) -> list[bool | None]:
            raise OSError("disk I/O error")

        with pytest.raises(OSError):
            parts.settler.commit_with(failing)
        assert parts.owed() == [callback_id] and parts.settler.holds_done()
        parts.clock.advance(DONE_GROUP_WINDOW)
        parts.settler.settle()
        assert parts.owed() == []
    finally:
        parts.close()


def test_a_callback_past_callback_timeout_is_recorded_timed_out_at_that_moment(journal: Journal) -> None:
    app, release = App("t"), threading.Event()
    app.on_failed(lambda job, error: release.wait(10))
    callback_id = owe_callback(journal, "on_failed")
    parts = Settling(journal, app)
    try:
        parts.settler.run_owed()
        parts.clock.advance(29.999)
        parts.settler.settle()
        assert parts.owed() == [callback_id] and parts.counters.callback_errors == 0
        parts.clock.advance(0.002)
        parts.settler.settle()
        assert parts.counters.callback_errors == 1
        parts.clock.advance(DONE_GROUP_WINDOW)
        parts.settler.settle()
        assert parts.owed() == []
        error = journal.db.execute("SELECT error FROM callbacks WHERE id = ?", (callback_id,)).fetchone()[0]
        assert error == "timed out after 30.0 s"
    finally:
        release.set()
        parts.close()


def test_no_app_loaded_leaves_callbacks_owed(journal: Journal) -> None:
    callback_id = owe_callback(journal)
    parts = Settling(journal, App("t"))
    parts.settler.app = None  # degraded: the new code could not be loaded
    try:
        parts.settler.run_owed()
        assert not parts.runner.running and parts.owed() == [callback_id]
        assert parts.settler.owes("on_failed")  # not known: owed
    finally:
        parts.close()


def test_a_callback_the_app_does_not_register_is_done_without_a_run(journal: Journal) -> None:
    callback_id = owe_callback(journal)
    parts = Settling(journal, App("t"))  # no on_finished registered
    try:
        assert not parts.settler.owes("on_finished")
        parts.settler.start(callback_id, 1, 1, "on_finished")
        assert not parts.runner.running and parts.owed() == []
    finally:
        parts.close()


