"""A damaged journal is reported, never silently replaced (issue 10, item 7).

The journal (`<state-dir>/journal.db`) holds every job's history. A file
there that is empty, not SQLite, another program's database, written by a
newer Phoenix, or damaged inside is refused by every command with one line
naming the file and the way out (`phoenix: error: ...`, exit 2), and its
bytes are left exactly as they were. A running master whose journal is
damaged under it keeps its children and reports an outage; it does not crash."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from phoenix.linux.paths import StatePaths
from phoenix.store.base import JournalError
from phoenix.store.sqlite import _SCHEMA, APPLICATION_ID, SCHEMA_VERSION, Journal
from tests.conftest import phoenix_cli, wait_for
from tests.faults.helpers import live

APP = "tests.apps.jobs:app"
PAGE = 4096  # SQLite's default page size, which the journal uses


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The command failed with exit 2 and exactly one error line holding `words`."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phoenix: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def every_command_refuses(state_dir: Path, *words: str, status_reads_it: bool = True) -> None:
    """start, status (text and JSON), submit, report and check all refuse, and
    touch nothing: the directory's files and their bytes are as they were.
    `status_reads_it` False: the damage is in pages `status` does not read
    (it reads the counts, the last failures and the running jobs, bounded at
    any size); it must still answer without a traceback."""
    before = snapshot(state_dir)
    statuses = (("status",), ("status", "--json"))
    for args in (("start", APP), *(statuses if status_reads_it else ()), ("submit", "tests.apps.jobs:noop", "{}"),
                 ("report", "--html", str(state_dir.parent / "timeline.html")), ("check", APP)):
        refused(phoenix_cli(*args, state_dir=state_dir), str(state_dir / "journal.db"), *words)
        assert snapshot(state_dir) == before, f"`phoenix {args[0]}` changed the state directory"
    assert not (state_dir.parent / "timeline.html").exists()


def snapshot(state_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in state_dir.iterdir() if p.is_file() and p.name != "phoenix.lock"}


def journal_with_history(master_factory, state_dir: Path, jobs: int = 20) -> Path:
    """A journal that a master has run jobs from: a few dozen pages."""
    StatePaths(state_dir).ensure()
    with Journal(state_dir / "journal.db") as journal:
        journal.submit_many(("tests.apps.jobs:noop", json.dumps({"i": i, "pad": "x" * 2000}), f"job-{i}")
                            for i in range(jobs))
    assert master_factory("--exit-when-done").wait_exit() == 0
    path = state_dir / "journal.db"
    assert not (state_dir / "journal.db-wal").exists()  # all checkpointed into the file at exit
    return path


def write_garbage_in_the_middle(path: Path) -> None:
    """Random bytes over the middle half of the file's pages (not page 1)."""
    size = path.stat().st_size
    start = max(PAGE, size // 4 // PAGE * PAGE)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, os.urandom(size // 2), start)
    finally:
        os.close(fd)


def sqlite_file(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


# -- the open/validate function, in process -------------------------------------------------


def test_open_refuses_every_kind_of_bad_file_and_touches_none(tmp_path):
    fresh = tmp_path / "fresh" / "journal.db"
    fresh.parent.mkdir()
    with Journal(fresh) as journal:
        assert journal.db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID == 0x50484E58
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        # Many data pages: the garbage below lands on them, past the schema's pages.
        journal.submit("tests.apps.jobs:noop", json.dumps({"pad": "x" * 1_000_000}), "kept")
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["journal.db"]  # no temporary file left

    def case(name: str, make, *words: str, verify: bool = False) -> None:
        directory = tmp_path / name
        directory.mkdir()
        make(directory / "journal.db")
        before = {p.name: p.read_bytes() for p in directory.iterdir()}
        with pytest.raises(JournalError) as refusal:
            Journal(directory / "journal.db", verify=verify)
        message = str(refusal.value)
        assert str(directory / "journal.db") in message, message
        for word in words:
            assert word in message, message
        assert {p.name: p.read_bytes() for p in directory.iterdir()} == before, f"{name}: files changed"

    case("empty", lambda p: p.write_bytes(b""), "empty (0 bytes)", "move it aside", f"mv {tmp_path}/empty/journal.db ")
    case("not-sqlite", lambda p: p.write_bytes(os.urandom(10_000)), "not an SQLite database", "move it aside")
    case("another-program", lambda p: sqlite_file(p, "PRAGMA application_id = 1234", "CREATE TABLE t (x)"),
         "another program", "0x000004d2")
    case("plain-sqlite", lambda p: sqlite_file(p, "CREATE TABLE t (x)"), "not a Phoenix journal")
    case("newer", lambda p: (Journal(p).close(), sqlite_file(p, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")),
         "newer Phoenix", f"journal version {SCHEMA_VERSION + 1}")

    def damaged_inside(path: Path) -> None:
        path.write_bytes(fresh.read_bytes())
        write_garbage_in_the_middle(path)

    case("garbage", damaged_inside, "damaged", verify=True)
    Journal(tmp_path / "garbage" / "journal.db").close()  # the cheap checks alone do not read every page

    def wal_left_alone(path: Path) -> None:
        journal = Journal(path)
        journal.submit("tests.apps.jobs:noop", "{}", "in-the-wal")
        wal = path.with_name("journal.db-wal").read_bytes()
        journal.close()
        path.unlink()
        path.with_name("journal.db-wal").write_bytes(wal)

    case("orphan-wal", wal_left_alone, "write-ahead log", "journal.db.damaged-wal")


def test_processes_creating_the_journal_at_once_share_one(tmp_path):
    """Creation is atomic (built aside, then linked): no process ever sees a
    half-made journal, which an empty file would now be refused as."""
    path = tmp_path / "journal.db"
    code = "import sys\nfrom phoenix.store.sqlite import Journal\nJournal(sys.argv[1]).submit('a:b', '{}', sys.argv[2])"
    processes = [subprocess.Popen([sys.executable, "-c", code, str(path), f"key-{i}"],
                                  stderr=subprocess.PIPE, text=True)
                 for i in range(6)]
    errors = [process.communicate(timeout=60)[1] for process in processes]
    assert all(process.returncode == 0 for process in processes), errors
    with Journal(path) as journal:
        assert journal.counts()["pending"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.db"]


def test_journal_of_the_released_code_is_stamped_and_kept(tmp_path):
    """A journal made before application_id (Phoenix's tables, no id) is accepted and stamped."""
    path = tmp_path / "journal.db"
    sqlite_file(path, "PRAGMA journal_mode=WAL", *[s for s in _SCHEMA.split(";") if s.strip()],
                "INSERT INTO meta VALUES ('schema', '1')",
                "INSERT INTO jobs (key, target, params, state, created_at, updated_at) "
                "VALUES ('old', 'tests.apps.jobs:noop', '{}', 'pending', 0, 0)")
    with Journal(path, verify=True) as journal:
        assert journal.counts()["pending"] == 1
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


# -- the commands, on a stopped state directory ------------------------------------------------


def test_journal_truncated_to_nothing_is_refused_by_every_command(master_factory, state_dir):
    path = journal_with_history(master_factory, state_dir)
    os.truncate(path, 0)
    every_command_refuses(state_dir, "empty (0 bytes)", "move it aside")
    assert path.read_bytes() == b""
    assert not (state_dir / "phoenix.pid").exists()  # the refused start left no pidfile


def test_garbage_inside_the_journal_is_refused_at_start(master_factory, state_dir):
    path = journal_with_history(master_factory, state_dir)
    write_garbage_in_the_middle(path)
    every_command_refuses(state_dir, "damaged", "move it aside", status_reads_it=False)
    for args in (("status",), ("status", "--json")):
        result = phoenix_cli(*args, state_dir=state_dir)
        assert result.returncode in (2, 3) and "Traceback" not in result.stderr, result.stderr


def commit_and_die(path: Path, key: str) -> None:
    """Another process submits a job and dies without closing the journal, as a
    killed master would: the commit is in the write-ahead log only."""
    code = ("import os, sys\nfrom phoenix.store.sqlite import Journal\n"
            "Journal(sys.argv[1]).submit('tests.apps.jobs:noop', '{}', sys.argv[2])\nos._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(path), key], check=True)
    assert path.with_name("journal.db-wal").stat().st_size > 32


def test_damaged_write_ahead_log_after_a_crash_is_refused(master_factory, state_dir):
    path = journal_with_history(master_factory, state_dir, jobs=2)
    commit_and_die(path, "only-in-the-log")
    wal = path.with_name("journal.db-wal")
    fd = os.open(wal, os.O_WRONLY)
    try:
        os.pwrite(fd, os.urandom(32), 0)  # its header: SQLite would ignore the whole log, and delete it
    finally:
        os.close(fd)
    every_command_refuses(state_dir, "write-ahead log", "is damaged", f"mv {wal} {path}.damaged-wal")


@pytest.mark.parametrize("kind", ["random-bytes", "another-program", "newer-phoenix"])
def test_a_file_that_is_not_this_phoenix_journal_is_refused(state_dir, kind):
    state_dir.mkdir(mode=0o700)
    path = state_dir / "journal.db"
    if kind == "random-bytes":
        path.write_bytes(os.urandom(8 * PAGE))
        words: tuple[str, ...] = ("not an SQLite database",)
    elif kind == "another-program":
        sqlite_file(path, "PRAGMA application_id = 1234", "CREATE TABLE photos (id INTEGER PRIMARY KEY)")
        words = ("another program", "right state directory")
    else:
        Journal(path).close()
        sqlite_file(path, "PRAGMA user_version = 99")
        words = ("newer Phoenix", "journal version 99")
    every_command_refuses(state_dir, *words)


# -- a running master whose journal is damaged under it ------------------------------------------


@pytest.mark.parametrize("how", ["truncated", "replaced", "replaced-by-sqlite", "replaced-by-new-journal"])
def test_running_master_survives_its_journal_being_damaged(master_factory, state_dir, tmp_path, how):
    master = master_factory()
    release = tmp_path / "release"
    for i in range(2):  # both must be running at once: they end when the test releases them, not after a time
        master.submit("tests.apps.jobs:sleep", {"s": 60, "i": i, "until": str(release)}, key=f"job-{i}")
    wait_for(lambda: all(j["state"] == "running" for j in master.jobs().values()) and len(master.jobs()) == 2,
             what="both jobs to run")
    path = state_dir / "journal.db"
    if how == "truncated":
        os.truncate(path, 0)
    else:  # a file put in its place, as a mistaken `mv` or restore would
        if how == "replaced":
            (state_dir / "other").write_bytes(os.urandom(8 * PAGE))
        elif how == "replaced-by-sqlite":
            sqlite_file(state_dir / "other", "CREATE TABLE t (x)")
        else:  # e.g. `phoenix submit` into a state directory re-created under the master
            Journal(state_dir / "other").close()
        os.rename(state_dir / "other", path)
    release.touch()  # their ends are written to the damaged file (a truncated one is noticed only then)
    master.wait_log("journal_unwritable", timeout=15)
    if how != "replaced-by-new-journal":  # (that one is a sound journal: status shows it)
        refused(phoenix_cli("status", state_dir=state_dir), str(path))
    # Its children finish under it; it starts nothing new and does not crash.
    def children_done() -> bool:
        assert master.proc.poll() is None, f"the master exited:\n{master.log()[-3000:]}"
        return live(master)["master"]["slots_used"] == 0

    wait_for(children_done, timeout=15, what="both children to finish")
    if how != "truncated":
        # The master never takes up another file in place of its journal: moving
        # that file aside lets it put its own back, history and all, and carry on.
        os.rename(path, state_dir / "journal.db.damaged")
        master.wait_log("journal_recovered", timeout=15)
        jobs = master.wait_jobs_done(timeout=15)
        assert {key: (job["state"], job["attempt"]) for key, job in jobs.items()} == {
            "job-0": ("finished", 1), "job-1": ("finished", 1)}
    master.stop()
    log = master.log()
    assert master.proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log and " kill pid=" not in log, log[-3000:]
    assert log.count("journal_unwritable") == 1 and log.count("state_dir_lost") <= 1, log[-3000:]
