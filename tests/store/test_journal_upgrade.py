"""The SQLite journal's upgrade path: a journal of version 1 (before delayed
jobs, priorities and periodic ticks) is brought to version 3 on open, in one
transaction with its version; its jobs keep their order and states."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from phoenix.store.sqlite import _SCHEMA, APPLICATION_ID, SCHEMA_VERSION, Journal

V3_COLUMNS = ("priority", "due_at", "run_at", "tick")


def version_1_journal(path: Path) -> None:
    """The tables as journal version 1 had them: today's, without version 3's columns."""
    schema = "\n".join(line for line in _SCHEMA.splitlines()
                       if not re.match(rf"\s+({'|'.join(V3_COLUMNS)})\s", line))
    schema = schema.replace("updated_at  REAL NOT NULL,\n)", "updated_at  REAL NOT NULL\n)")
    db = sqlite3.connect(path)
    for statement in schema.split(";"):
        if statement.strip():
            db.execute(statement)
    db.executemany("INSERT INTO jobs (key, target, params, state, created_at, updated_at) VALUES (?, 'm:f', '1', "
                   "'pending', ?, ?)", [("older", 100.0, 100.0), ("newer", 200.0, 200.0)])
    db.execute("INSERT INTO meta VALUES ('schema', '1')")
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


def test_a_version_1_journal_is_upgraded_on_open_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    version_1_journal(path)
    assert not {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(jobs)")} & set(V3_COLUMNS)
    with Journal(path, verify=True) as journal:
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = {r[1] for r in journal.db.execute("PRAGMA table_info(jobs)")}
        assert set(V3_COLUMNS) <= columns
        assert journal.counts()["scheduled"] == 0 and journal.counts()["pending"] == 2
        assert [job.key for job in journal.pending(5)] == ["older", "newer"]  # due since their submission
        journal.submit("m:f", "2", "later", run_at=10**10)
        assert journal.counts()["scheduled"] == 1  # kept by the triggers from the upgrade on
    with Journal(path) as journal:  # opened again: nothing more to do
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
