"""Batches as real processes on SQLite: a batch of 12 jobs (2 failing) calls
`on_batch_complete` exactly once with its counts through a USR2 and a stop +
start, and at least once (again, after the restart) when the master is
SIGKILLed in the middle of the callback; the commands list batches and their
jobs, and refuse bad input in one line."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from phoenix import Client
from phoenix.store.sqlite import Journal
from tests.conftest import phoenix_cli, wait_for

APP = "tests.apps.batches:app"
TARGET = "tests.apps.batches:gated"
SLOW = 30.0
FAILING = (3, 8)


def submit_batch(state_dir: Path, name: str, gates: list[Path]) -> None:
    """12 jobs, the 2 of FAILING fail; job n waits for gates[n % len(gates)]."""
    with Client(state_dir=str(state_dir)).batch(name) as batch:
        for n in range(12):
            batch.submit(TARGET, {"n": n, "gate": str(gates[n % len(gates)]), "fail": n in FAILING}, key=f"{name}-{n}")


def batch_callbacks(master: Any) -> list[dict[str, Any]]:
    return [record for record in master.callbacks() if "batch" in record]


def batch_callback_row(state_dir: Path) -> tuple[str, int] | None:
    """(state, runs) of the batch's callback in the journal."""
    journal = Journal(state_dir / "journal.db")
    try:
        row = journal.db.execute("SELECT state, runs FROM callbacks WHERE kind = 'on_batch_complete'").fetchone()
    finally:
        journal.close()
    return None if row is None else (row[0], row[1])


EXPECTED = {"batch": "feeds", "counts": {"failed": 2, "finished": 10}, "completion": 1, "jobs": 12,
            "failed": ["feeds-3", "feeds-8"]}


def test_a_batch_completes_once_through_a_usr2_and_a_restart(master_factory, state_dir, tmp_path):
    master = master_factory(app=APP)
    early, late = tmp_path / "early", tmp_path / "late"
    submit_batch(state_dir, "feeds", [early, late])
    batches = json.loads(phoenix_cli("batches", "--json", state_dir=state_dir).stdout)["batches"]
    assert [(b["name"], b["state"], b["jobs"], b["remaining"]) for b in batches] == [("feeds", "closed", 12, 12)]
    early.touch()  # half the jobs (one failing) end under the first image
    wait_for(lambda: json.loads(phoenix_cli("batches", "--json", state_dir=state_dir).stdout)["batches"][0]
             ["remaining"] == 6, timeout=SLOW, what="6 jobs to end")
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2", timeout=SLOW)
    assert batch_callbacks(master) == []
    late.touch()  # the rest, one failing too, end under the new image: it owes the call
    wait_for(lambda: batch_callback_row(state_dir) == ("done", 1), timeout=SLOW, what="the callback recorded done")
    [record] = batch_callbacks(master)
    assert {k: v for k, v in record.items() if k != "master"} == EXPECTED
    assert record["master"] == master.pid
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=3", timeout=SLOW)
    master.stop()
    master_factory(app=APP, start=False).start()  # a stop and a start: nothing owed, nothing run again
    listed = json.loads(phoenix_cli("jobs", "--batch", "feeds", "--state", "failed", "--json",
                                    state_dir=state_dir).stdout)
    assert sorted(job["key"] for job in listed["jobs"]) == ["feeds-3", "feeds-8"]
    assert len(batch_callbacks(master)) == 1 and batch_callback_row(state_dir) == ("done", 1)
    batches = json.loads(phoenix_cli("batches", "--json", state_dir=state_dir).stdout)["batches"]
    assert batches[0]["state"] == "complete" and batches[0]["counts"] == {"failed": 2, "finished": 10}

    # A failed member retried re-opens the count; its end completes the batch again: completion 2.
    retried = phoenix_cli("retry", "feeds-3", state_dir=state_dir)
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: len(batch_callbacks(master)) == 2, timeout=SLOW, what="the second completion's callback")
    assert batch_callbacks(master)[1]["completion"] == 2
    assert batch_callbacks(master)[1]["counts"] == {"failed": 2, "finished": 10}  # it failed again


def test_a_master_killed_in_the_callback_runs_it_again_after_a_restart(master_factory, state_dir, tmp_path):
    hold = tmp_path / "hold"
    gate = tmp_path / "gate"
    env = {"PHOENIX_TEST_BATCH_HOLD": str(hold)}
    first = master_factory(app=APP, env=env)
    submit_batch(state_dir, "feeds", [gate])
    gate.touch()
    wait_for(lambda: batch_callbacks(first), timeout=SLOW, what="the callback to start")
    first.signal(signal.SIGKILL)
    assert first.wait_exit(SLOW) == -signal.SIGKILL
    assert batch_callback_row(state_dir) == ("owed", 1)  # started, never recorded done
    hold.touch()
    second = master_factory(app=APP, env=env, start=False).start()
    wait_for(lambda: batch_callback_row(state_dir) == ("done", 2), timeout=SLOW, what="the callback run again")
    records = batch_callbacks(second)
    assert [r["master"] for r in records] == [first.pid, second.pid]  # at least once: twice, never zero
    assert all({k: v for k, v in r.items() if k != "master"} == EXPECTED for r in records)


def test_bad_batch_input_is_one_line_and_writes_nothing(master_factory, state_dir, tmp_path):
    master_factory(app=APP)
    submit_batch(state_dir, "feeds", [tmp_path / "gate"])  # closed by the block's end
    reused = phoenix_cli("submit", TARGET, json.dumps({"n": 99, "gate": "x"}), "--key", "other", "--batch", "feeds",
                         state_dir=state_dir)
    assert reused.returncode == 2 and "batch 'feeds' is closed" in reused.stderr
    assert len(reused.stderr.strip().splitlines()) == 1
    for args in (("jobs", "--batch", "nope"), ("batch", "close", "nope")):
        result = phoenix_cli(*args, state_dir=state_dir)
        assert result.returncode == 2 and result.stderr.strip() == (
            "phoenix: error: no batch named 'nope': see `phoenix batches` for the batches there are"), result
    journal = Journal(state_dir / "journal.db")
    try:
        assert journal.job_by_key("other") is None
        assert [b["name"] for b in journal.batches()] == ["feeds"]
    finally:
        journal.close()


def test_a_journal_of_an_older_schema_gets_batches_at_its_first_open(tmp_path):
    path = tmp_path / "journal.db"
    Journal(path).close()
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    for statement in ("DROP TRIGGER batch_member_ended", "DROP TRIGGER batch_member_reopened", "DROP INDEX jobs_batch",
                      "ALTER TABLE jobs DROP COLUMN batch_id", "DROP TABLE batches", "PRAGMA user_version = 1"):
        db.execute(statement)  # as Phoenix 0.1.0 made it
    db.execute("INSERT INTO jobs (key, target, params, state, created_at, updated_at) "
               "VALUES ('old', 'm:f', 'null', 'finished', 0, 0)")
    db.close()
    journal = Journal(path)
    try:
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == 5
        journal.submit_to_batch("b", [("m:f", "1", "new")])
        assert journal.close_batch("b") == "closed"
        assert journal.job_row(journal.job_by_key("old")["id"])["batch_id"] is None
    finally:
        journal.close()


def test_a_member_submitted_from_the_command_line_keeps_its_due_time_and_priority(state_dir):
    for n, name in enumerate(("old", "later")):
        submitted = phoenix_cli("submit", TARGET, json.dumps({"n": n, "gate": "x"}), "--key", f"{name}-1",
                                "--batch", name, "--in", "3600", "--priority", "5", state_dir=state_dir)
        assert submitted.returncode == 0, submitted.stderr
    shown = json.loads(phoenix_cli("show", "later-1", "--json", state_dir=state_dir).stdout)
    assert (shown["state"], shown["priority"]) == ("scheduled", 5)
    listed = phoenix_cli("batches", "--limit", "1", state_dir=state_dir)
    assert "later" in listed.stdout and "old" not in listed.stdout and "--limit N shows more" in listed.stdout
    report = json.loads(phoenix_cli("batches", "--json", "--limit", "1", state_dir=state_dir).stdout)
    assert [b["name"] for b in report["batches"]] == ["later"] and report["more"] is True
