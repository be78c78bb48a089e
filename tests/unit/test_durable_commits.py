"""The SQLite journal's durable commits, in process: a commit acknowledged
to someone runs at synchronous=FULL and leaves the connection at NORMAL for
the others, whatever happens inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from phoenix.store.base import KeyConflict
from phoenix.store.sqlite import Journal

NORMAL, FULL = 1, 2


def synchronous(journal: Journal) -> int:
    level: int = journal.db.execute("PRAGMA synchronous").fetchone()[0]
    return level


def test_a_durable_commit_runs_at_full_and_the_connection_returns_to_normal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        assert synchronous(journal) == NORMAL
        with journal.transaction(durable=True) as db:
            assert synchronous(journal) == FULL
            db.execute("INSERT INTO meta VALUES ('x', '1')")
        assert synchronous(journal) == NORMAL
        assert journal._synced_wal is not None  # the write-ahead log's directory entry was synced
    finally:
        journal.close()


def test_a_refused_durable_commit_rolls_back_and_returns_to_normal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    try:
        journal.submit("m:f", "{}", "k")
        with pytest.raises(KeyConflict):
            journal.submit("m:g", "{}", "k")  # rolled back inside a durable transaction
        assert synchronous(journal) == NORMAL
        assert not journal.db.in_transaction
        assert journal.counts()["pending"] == 1
    finally:
        journal.close()


def test_only_acknowledged_writes_are_durable(tmp_path: Path) -> None:
    """The master's other commits (an outcome whose final was held already, a
    callback started) stay at NORMAL: one fsync per acknowledgement, not per write."""
    journal = Journal(tmp_path / "journal.db")
    durable: list[str] = []
    journal.db.set_trace_callback(lambda sql: durable.append(sql) if sql == "PRAGMA synchronous=FULL" else None)
    try:
        journal.submit("m:f", "{}", "k")  # acknowledged: exit 0
        job = journal.pending(1)[0]
        attempt = journal.begin_attempt(job, 1, 123, 456)  # acknowledged: the child's go-ahead
        journal.hold_finals([(attempt, "{}")])  # acknowledged: the child's ack
        assert len(durable) == 3
        _, callback = journal.end_attempt(attempt, job.id, outcome="finished", reason=None, error=None,
                                          result_json=None, max_rss_kb=None, job_state="finished",
                                          counts_as_failure=False, callback="on_finished", attempt_n=1)
        assert callback is not None
        journal.callback_started(callback)
        assert len(durable) == 3
        journal.callback_done(callback, None)  # acknowledged: never owed again
        assert len(durable) == 4
    finally:
        journal.close()


def test_a_stop_spares_only_a_child_that_holds_the_only_copy_of_its_outcome() -> None:
    from phoenix.master.arbiter import holds_only_copy
    from phoenix.master.attempts import Attempt

    child = Attempt(attempt_id=1, job_id=1, key="k", target="m:f", number=1, pid=123, spec=None, started=0.0,
                    last_beat=0.0, last_progress=0.0)
    assert not holds_only_copy(child)  # running its job: a stop TERMs it (back to pending)
    child.final = {"result": None}
    assert holds_only_copy(child)  # finished, the journal refused it: spared
    child.final_held = True
    assert not holds_only_copy(child)  # in the journal: it may be ended like any other
