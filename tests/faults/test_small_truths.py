"""Answers tell the truth (issue 18, class 5, and the smaller items found with
it): a documented limit is the limit a user meets, a damaged journal is
refused by every command that writes, and every cancelled job gets the
`on_failed` the README promises."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from phoenix.journal import Journal
from phoenix.paths import StatePaths
from tests.conftest import Master, phoenix_cli

APP = "tests.apps.truths:app"
TRUTHS = "tests.apps.truths"
PAGE = 4096  # SQLite's page size in the journal


# -- a result's limit is the result's own: 64 KiB of JSON ---------------------------------------


def test_a_result_of_exactly_64_kib_of_json_finishes_and_one_byte_more_is_refused_with_its_size(master_factory):
    master: Master = master_factory(app=APP)
    sizes = {"at-limit": 65536, "seen-refused": 65476, "one-over": 65537}
    for key, size in sizes.items():
        master.submit(f"{TRUTHS}:sized_result", {"bytes": size}, key=key)
    jobs = master.wait_jobs_done(list(sizes))
    assert jobs["at-limit"]["state"] == "finished", jobs["at-limit"]["error"]
    assert jobs["seen-refused"]["state"] == "finished", jobs["seen-refused"]["error"]
    results = {c["key"]: c for c in master.callbacks() if c["kind"] == "finished"}
    assert set(results) == {"at-limit", "seen-refused"}
    over = jobs["one-over"]
    assert over["outcome"] == "error"
    assert "the job's result is 65537 bytes of JSON" in over["error"]
    assert "65536-byte limit of a result" in over["error"]


# -- a damaged journal is refused by every command that writes ----------------------------------


def damaged_journal(master_factory, state_dir: Path) -> Path:
    """A journal a master has run jobs from (one failed and one pending left
    for retry and cancel), with random bytes over pages that a submit does
    not read: the table of attempts, not the jobs' key index."""
    StatePaths(state_dir).ensure()
    with Journal(state_dir / "journal.db") as journal:
        journal.submit_many((f"{TRUTHS}:sized_result", json.dumps({"bytes": 2, "pad": "x" * 3000}), f"job-{i}")
                            for i in range(30))
    assert master_factory("--exit-when-done", app=APP).wait_exit() == 0
    path = state_dir / "journal.db"
    with Journal(path) as journal:
        journal.submit(f"{TRUTHS}:sleep", "{}", "still-pending")
        journal.db.execute("UPDATE jobs SET state = 'failed' WHERE key = 'job-0'")
        journal.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        attempts_root = journal.db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'attempts'").fetchone()[0]
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, os.urandom(PAGE), (attempts_root - 1) * PAGE)  # the attempts table's root page
    finally:
        os.close(fd)
    return path


@pytest.mark.parametrize("command", [
    ("submit", f"{TRUTHS}:sleep", '{"new": 1}', "--key", "new"),
    ("cancel", "still-pending"),
    ("retry", "job-0"),
    ("retry", "--failed"),
    ("prune", "--finished-before", "0s", "--failed-before", "0s"),
])
def test_every_writing_command_refuses_a_damaged_journal_and_writes_nothing(master_factory, state_dir, command):
    path = damaged_journal(master_factory, state_dir)
    status = phoenix_cli("status", state_dir=state_dir)
    assert status.returncode == 2 and "damaged" in status.stderr, status.stderr  # what status says of it
    before = {p.name: p.read_bytes() for p in state_dir.iterdir() if p.is_file() and p.name != "phoenix.lock"}
    result = phoenix_cli(*command, state_dir=state_dir)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phoenix: error: "), result.stderr
    assert str(path) in lines[0] and "damaged" in lines[0] and "move it aside" in lines[0], lines[0]
    after = {p.name: p.read_bytes() for p in state_dir.iterdir() if p.is_file() and p.name != "phoenix.lock"}
    assert after == before, f"`phoenix {command[0]}` wrote into a damaged journal"
