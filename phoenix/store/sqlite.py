"""The journal: the single source of truth for jobs, attempts and owed
callbacks, in SQLite (WAL) inside the state directory.

The master is its only writer, except that `submit` may be called by any
process (the CLI, a script, an app's startup hook). Everything the master
must not forget across an exec, a stop or a crash is written here first.

It implements the store interface (base.Store), as the PostgreSQL store
(postgres.py) does for many hosts; the master talks to nothing else.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from phoenix import log
from phoenix.linux import clock
from phoenix.linux.paths import StatePaths, exclusive_temporary
from phoenix.linux.pidfile import lock_held
from phoenix.linux.untrusted import check_key, storable, storable_or_none, stored_json, unstorable, visible
from phoenix.rules.outcomes import CANCELLED_REASON
from phoenix.rules.states import KillReason
from phoenix.store import batches
from phoenix.store.base import (
    ENDED_BADLY,
    FULL_POOL_TARGETS,
    JOB_STATES,
    NOT_NEWEST,
    SAVE_CHECKPOINT_WHERE,
    WAITING,
    WITHDRAWN_WITH_ITS_CANCEL,
    Job,
    JournalError,
    OpenAttempt,
    RetryRefused,
    Upgrade,
    default_key,
    key_conflict,
    noted_ending,
    timing_differences,
)

# The file says it is a Phoenix journal (PRAGMA application_id, in SQLite's
# header) and which schema it holds (PRAGMA user_version): a file of another
# program, or of a newer Phoenix, is refused rather than written over.
APPLICATION_ID = int.from_bytes(b"PHNX", "big")
SCHEMA_VERSION = 5  # 2 is the PostgreSQL store's (leases, fencing): the journal went from 1 to 3
_SQLITE_HEADER = b"SQLite format 3\x00"
_TABLES = frozenset({"meta", "jobs", "attempts", "callbacks", "events"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    target      TEXT NOT NULL,
    params      TEXT NOT NULL,              -- JSON
    state       TEXT NOT NULL,              -- scheduled | pending | running | finished | failed | cancelled
    attempts    INTEGER NOT NULL DEFAULT 0, -- attempts started
    failures    INTEGER NOT NULL DEFAULT 0, -- attempts that count against retries
    not_before  REAL NOT NULL DEFAULT 0,    -- wall clock, for display: backoff before the next attempt
    not_before_boot    REAL,                -- the same in CLOCK_BOOTTIME seconds (see clock.py) ...
    not_before_boot_id TEXT,                -- ... of this boot (NULL: no backoff, or an older journal)
    outcome     TEXT,
    result      TEXT,                       -- JSON
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0, -- higher first (version 3)
    due_at      REAL NOT NULL DEFAULT 0,    -- wall clock UTC: when it is due (its submission, if not delayed)
    run_at      REAL,                       -- the due time asked for (--in, --at), NULL if none: a key's identity
    tick        REAL,                       -- a periodic job: its schedule's tick (UTC seconds), NULL otherwise
    checkpoint  TEXT,                       -- JSON: the last phoenix.checkpoint() of its attempts
    checkpoint_at      REAL,                -- wall clock, for display
    checkpoint_attempt INTEGER,             -- the attempt (n) and message (seq) that saved it: an older
    checkpoint_seq     INTEGER              -- one arriving late (from an outbox) never replaces it
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (state, not_before, id);
CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL REFERENCES jobs (id),
    n           INTEGER NOT NULL,           -- 1-based attempt number
    generation  INTEGER NOT NULL,           -- master generation that started it
    pid         INTEGER,
    start_time  INTEGER,                    -- /proc/PID/stat field 22: tells a reused pid apart
    started_at  REAL NOT NULL,              -- wall clock, for display
    started_boot REAL,                      -- CLOCK_BOOTTIME seconds: the attempt's age across a restart
    ended_at    REAL,
    outcome     TEXT,                       -- NULL while running
    reason      TEXT,
    error       TEXT,
    max_rss_kb  INTEGER,
    final       TEXT,                       -- JSON: the child's final message, held (and acked) before its exit
    pool        TEXT,                       -- the pool whose slot it holds until its outcome (version 3)
    progress    TEXT,                       -- JSON [done, total, note]: the job's last phoenix.progress()
    UNIQUE (job_id, n)
);
CREATE INDEX IF NOT EXISTS attempts_open ON attempts (outcome) WHERE outcome IS NULL;
CREATE TABLE IF NOT EXISTS callbacks (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL REFERENCES jobs (id),
    attempt     INTEGER NOT NULL,
    kind        TEXT NOT NULL,              -- on_finished | on_failed
    state       TEXT NOT NULL,              -- owed | done
    runs        INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    created_at  REAL NOT NULL,
    done_at     REAL,
    UNIQUE (job_id, kind)
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    at          REAL NOT NULL,
    kind        TEXT NOT NULL,              -- master_start | replaced | master_stop ...
    generation  INTEGER,
    pid         INTEGER,
    detail      TEXT
);
"""


def _companion_files(path: Path) -> list[Path]:
    """The journal and SQLite's files beside it that exist: the write-ahead log
    holds its latest commits, so the three are moved, copied or kept together."""
    return [p for p in (path, _wal(path), path.with_name(path.name + "-shm")) if p.exists()]


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _orphan_wal(path: Path) -> bool:
    """No journal, but a write-ahead log with commits in it where the journal should be."""
    wal = _wal(path)
    return not path.exists() and wal.exists() and wal.stat().st_size > 0


def journal_present(path: Path) -> bool:
    """A journal is there, or what is left of one (its write-ahead log)."""
    return path.exists() or _orphan_wal(path)


def damaged(path: Path, why: str) -> JournalError:
    """The error for a journal Phoenix will not use: which file, what is wrong,
    and the two ways out. Phoenix itself never writes over it."""
    why += "" if why.endswith("?") else "."
    moves = "; ".join(f"mv {p} {path}.damaged{p.name[len(path.name):]}" for p in _companion_files(path))
    return JournalError(
        f"the journal {path} is unusable: {why} It is left as it is. Restore it from a copy (with its -wal "
        f"file, if any), or move it aside to start afresh with an empty journal (its jobs would have to be "
        f"submitted again): {moves}"
    )


# The journal files this process has open now ((device, inode) -> how many
# Journals). A second Journal on one of them (a phoenix.Client in a master's
# callback or startup hook) must not read its header with open() and close():
# closing any descriptor of a file drops every POSIX lock the process holds on
# it, SQLite's shared lock among them, and another process's next close then
# took the master for gone and deleted the write-ahead log under it: the
# master's later commits went to a file no one else could see (lost).
_OPEN_HERE: dict[tuple[int, int], int] = {}


def _check_file(path: Path) -> None:
    """Refuse, before SQLite sees it, a file that cannot be a journal: SQLite
    would take an empty file for a new database and write a fresh one over it.
    Reads SQLite's headers only: the file's first 100 bytes, its log's first 32."""
    with open(path, "rb") as file:
        header = file.read(100)
    if not header:
        raise damaged(path, "it is empty (0 bytes), which a journal never is once created: it was truncated, "
                            "and its history is gone from this file")
    if not header.startswith(_SQLITE_HEADER):
        raise damaged(path, "it is not an SQLite database (it does not start with SQLite's header)")
    application_id = int.from_bytes(header[68:72], "big")
    if application_id not in (0, APPLICATION_ID):
        raise _foreign(path, application_id)
    if not _wal_header_sound(path):
        raise damaged(path, f"its write-ahead log {_wal(path)} is damaged (its header is not SQLite's): the "
                            f"journal's latest commits are in that file, and SQLite would silently drop them")


def _wal_header_sound(path: Path) -> bool:
    """The write-ahead log left by a master that did not close the journal
    (killed, crashed) holds its latest commits. With a damaged header SQLite
    ignores the whole file, and deletes it at the next close: check first.
    (A damaged frame further in cannot be told from the torn tail a power cut
    may leave under synchronous=NORMAL; SQLite drops the log from there on.)"""
    for attempt in range(2):
        try:
            with open(_wal(path), "rb") as file:
                header = file.read(32)
        except FileNotFoundError:
            return True
        if len(header) < 32 or header == bytes(32):  # SQLite would find no frame in it
            return True
        magic, version, page_size, _seq, _salt1, _salt2, sum1, sum2 = struct.unpack(">8I", header)
        if (magic in (0x377F0682, 0x377F0683) and version == 3007000 and 512 <= page_size <= 65536
                and _wal_checksum(header[:24], big_endian=bool(magic & 1)) == (sum1, sum2)):
            return True
        if attempt == 0:
            time.sleep(0.05)  # a master may have been rewriting it just as we read: look again
    return False


def _wal_checksum(data: bytes, big_endian: bool) -> tuple[int, int]:
    """SQLite's write-ahead log checksum (see its file format documentation)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    s0 = s1 = 0
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _foreign(path: Path, application_id: int) -> JournalError:
    return damaged(path, f"it is an SQLite database of another program (application_id {application_id:#010x}), "
                         f"not a Phoenix journal: is this the right state directory?")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _text_or_surrogates(data: bytes) -> str:
    return str(data, "utf-8", "surrogateescape")


def _readable(names: Sequence[str], row: Iterable[Any]) -> dict[str, Any]:
    """A row read for a reader (`phoenix jobs`, `show`, the dashboard, a
    callback) as a dict. Phoenix stores no BLOB; one another tool put in a
    text column (sqlite3 hands it back as bytes) is read as the text its bytes
    spell, as text_factory reads text that is not UTF-8, so every reader shows
    it escaped rather than failing on bytes. (A master refuses to start such a
    job: claims read rows as they are, and specs.startable names the column.)"""
    return {name: _as_text(value) for name, value in zip(names, row, strict=True)}


def _as_text(value: Any) -> Any:
    return _text_or_surrogates(value) if isinstance(value, bytes) else value


def _where_key(key: str) -> tuple[str, tuple[Any, ...]] | None:
    """The condition (on jobs.key) and its arguments that find the job named
    `key`; None if no job can have it. A key with lone surrogates, bytes that
    were not UTF-8 as a shell hands them over (and as `visible` shows them),
    names the job whose key another tool stored as those bytes, a BLOB or
    text that is not UTF-8: the operator can show, cancel and retry it."""
    if not unstorable(key):
        return "key = ?", (key,)
    try:
        spelled = key.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte stands for: no job has it
        return None
    return "key IN (?, CAST(? AS TEXT))", (spelled, spelled)


def _create(path: Path) -> None:
    """Make a new journal atomically: built complete (schema, application_id,
    user_version in one transaction) under a temporary name, then linked into
    place. Nobody ever sees a half-made journal, and an empty file at `path`
    can only mean damage. If another process links its own first, that one is used."""
    if _orphan_wal(path):  # SQLite would replay its pages into the new file
        raise damaged(path, f"it is missing, but its write-ahead log {_wal(path)} is still there: the journal "
                            f"was deleted or moved without it, and a new journal would take in its stale pages")
    # Private to this user (SQLite gives -wal and -shm the same mode): job
    # parameters and results may be sensitive. An unpredictable name made
    # with O_EXCL, so no link planted at the name is followed.
    fd, name = exclusive_temporary(path.parent, f"{path.name}.creating-")
    os.fchmod(fd, 0o600)  # exactly, whatever the umask
    os.close(fd)
    temp = Path(name)
    try:
        db = sqlite3.connect(temp, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(_BACKOFF_INDEX)
            _add_scale_schema(db)
            for statement in (*_V3_INDEXES, *_V3_TABLES):
                db.execute(statement)
            batches.add_to_sqlite(db)
            # Still written so that an older Phoenix (before user_version) can read the journal after a rollback.
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        finally:
            db.close()
        try:
            os.link(temp, path)
        except FileExistsError:
            return  # another process created it first: use theirs
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)  # the new name survives a power cut
        finally:
            os.close(directory)
    finally:
        temp.unlink(missing_ok=True)


def _upgrade_3_to_4(db: sqlite3.Connection) -> None:
    """Checkpoints on the job, progress on the attempt (docs/long-jobs.md)."""
    for table, column, declaration in (("jobs", "checkpoint", "TEXT"), ("jobs", "checkpoint_at", "REAL"),
                                       ("jobs", "checkpoint_attempt", "INTEGER"),
                                       ("jobs", "checkpoint_seq", "INTEGER"), ("attempts", "progress", "TEXT")):
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


# Added after the first release: (table, column, declaration), created in older journals on open.
_ADDED_COLUMNS = (
    ("jobs", "not_before_boot", "REAL"),
    ("jobs", "not_before_boot_id", "TEXT"),
    ("attempts", "started_boot", "REAL"),
    ("attempts", "final", "TEXT"),
)

# Only jobs waiting out a backoff: few, so the boot-time rule below reads few rows
# (named in INDEXED BY: without statistics, SQLite would scan jobs_pending instead).
_BACKOFF_INDEX = ("CREATE INDEX IF NOT EXISTS jobs_backoff ON jobs (not_before_boot) "
                  "WHERE state = 'pending' AND not_before_boot_id IS NOT NULL")

# A pending job with a boot-time backoff is due once that has passed, or at
# once if it was set under an earlier boot. One without (never failed, or an
# older journal's row) is judged by its wall-clock not_before, as before: 0
# for a fresh job, so these come first on the jobs_pending index.
_NO_BACKOFF = "state = 'pending' AND not_before_boot_id IS NULL"
_IN_BACKOFF = "state = 'pending' AND not_before_boot_id IS NOT NULL"
_BACKOFF_WAIT = "(CASE WHEN not_before_boot_id = :boot THEN not_before_boot - :since_boot ELSE 0 END)"
# A number of a job's row that another tool replaced with bytes or text (an
# UPDATE through Python's sqlite3 stores what it is given): arithmetic or a
# sort over it would stop the master at every start. `pending` names the
# column, and the job fails before any attempt (specs.startable).
_NOT_A_NUMBER = "typeof({}) NOT IN ('integer', 'real')"
_DAMAGED_NUMBER = ("CASE " + " ".join(
    f"WHEN typeof({column}) NOT IN ({kinds}) THEN '{column} column of its row holds a ' || typeof({column}) || ' value'"
    for column, kinds in (("attempts", "'integer'"), ("failures", "'integer'"), ("priority", "'integer'"),
                          ("due_at", "'integer', 'real'"), ("not_before", "'integer', 'real'"))) + " END")

# What keeps the operator's reads bounded as the journal grows (status, jobs,
# metrics): the jobs of each state by last change (the last failures, `jobs
# --state`), all jobs by last change (`jobs`), and the number of jobs in each
# state, kept by triggers as jobs are added, change state and are deleted, so
# that a count reads five rows, never the jobs (a GROUP BY over 1,000,000 jobs
# reads them all: see bench/RESULTS.md).
_SCALE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS jobs_state_updated ON jobs (state, updated_at)",
    "CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated_at)",
)
_JOB_COUNTS = (
    "CREATE TABLE job_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    # (A row per state of JOB_STATES is made with the table: a plain UPDATE per change.)
    "CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN "
    "UPDATE job_counts SET n = n + 1 WHERE state = new.state; END",
    "CREATE TRIGGER job_counts_update AFTER UPDATE OF state ON jobs WHEN old.state IS NOT new.state BEGIN "
    "UPDATE job_counts SET n = n - 1 WHERE state = old.state; "
    "UPDATE job_counts SET n = n + 1 WHERE state = new.state; END",
    "CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN "
    "UPDATE job_counts SET n = n - 1 WHERE state = old.state; END",
)
_COUNT_OBJECTS = frozenset({"job_counts", "job_counts_insert", "job_counts_update", "job_counts_delete"})
_SCALE_OBJECTS = _COUNT_OBJECTS | {"jobs_state_updated", "jobs_updated"}


def _needs_scale_schema(db: sqlite3.Connection) -> bool:
    """Read-only: whether a journal of an older Phoenix lacks the indexes and counts above."""
    names = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type IN ('index', 'table', "
                                            "'trigger')")}
    return not _SCALE_OBJECTS <= names


def _add_scale_schema(db: sqlite3.Connection) -> None:
    """Inside the caller's transaction (nothing is written between the count
    and the triggers): the counts start from the jobs there are."""
    for statement in _SCALE_INDEXES:
        db.execute(statement)
    names = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
    if not _COUNT_OBJECTS <= names:  # none, or some lost (counts without a trigger would drift): all anew
        for trigger in sorted(_COUNT_OBJECTS - {"job_counts"}):
            db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        db.execute("DROP TABLE IF EXISTS job_counts")
        for statement in _JOB_COUNTS:
            db.execute(statement)
        db.executemany("INSERT INTO job_counts VALUES (?, 0)", [(state,) for state in JOB_STATES])
        db.execute("INSERT INTO job_counts SELECT state, count(*) FROM jobs GROUP BY state "
                   "ON CONFLICT (state) DO UPDATE SET n = excluded.n")


# Version 3 (delayed and periodic jobs, priorities): the claim's order (a
# read of LIMIT rows from the top of jobs_ready: O(log n) with 100,000
# pending), the scheduled jobs by due time (the earliest is what the master
# sleeps until), and each schedule's ticks by time (its last tick).
_V3_INDEXES = (
    "CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (priority DESC, due_at, id) "
    "WHERE state = 'pending' AND not_before_boot_id IS NULL",
    "CREATE INDEX IF NOT EXISTS jobs_scheduled ON jobs (due_at) WHERE state = 'scheduled'",
    "CREATE INDEX IF NOT EXISTS jobs_ticks ON jobs (target, tick) WHERE tick IS NOT NULL",
)
_V3_COLUMNS = (("priority", "INTEGER NOT NULL DEFAULT 0"), ("due_at", "REAL NOT NULL DEFAULT 0"),
               ("run_at", "REAL"), ("tick", "REAL"))
# Global resource pools: each pool's capacity and the slots its open attempts
# hold (`used`, changed in the transaction that begins or ends an attempt),
# and the pool each target's jobs take a slot of (written by the master from
# its code, so that a job submitted without the code is in its pool too).
_V3_TABLES = (
    "CREATE TABLE IF NOT EXISTS pools (name TEXT PRIMARY KEY, capacity INTEGER NOT NULL, "
    "used INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS pool_targets (target TEXT PRIMARY KEY, pool TEXT NOT NULL)",
)


def _upgrade_to_3(db: sqlite3.Connection) -> None:
    """Journal version 1 -> 3, inside the caller's transaction (which also
    sets user_version): the columns and indexes above; a job recorded
    before is due since its submission; `scheduled` gets its kept count."""
    existing = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for column, declaration in _V3_COLUMNS:
        if column not in existing:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")
    if "pool" not in {row[1] for row in db.execute("PRAGMA table_info(attempts)")}:
        db.execute("ALTER TABLE attempts ADD COLUMN pool TEXT")
    for statement in _V3_TABLES:
        db.execute(statement)
    db.execute("UPDATE jobs SET due_at = created_at WHERE due_at = 0")
    for statement in _V3_INDEXES:
        db.execute(statement)
    db.execute("INSERT INTO job_counts VALUES ('scheduled', 0) ON CONFLICT (state) DO NOTHING")

# Each journal version's upgrade to the next (version 2 was only PostgreSQL's), applied by Journal._upgrade.
_UPGRADES: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _upgrade_to_3,  # scheduling: due times, priorities, ticks, pools
    3: _upgrade_3_to_4,  # long jobs: checkpoints, progress
    4: batches.add_to_sqlite,  # batches, counted by a trigger on jobs
}

_INSERT_JOB = ("INSERT INTO jobs (key, target, params, state, created_at, updated_at, priority, due_at, run_at, tick) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING")


def _insert_job(db: sqlite3.Connection, key: str, target: str, params_json: str, now: float,
                run_at: float | None = None, priority: int = 0, tick: float | None = None) -> tuple[int, bool]:
    """Insert a job, or find the same one under its key, inside the caller's
    transaction (BEGIN IMMEDIATE: the comparison and the insert are one step
    for concurrent submitters). `run_at`: its due time, wall clock UTC (in
    the future: `scheduled` until then)."""
    state = "scheduled" if run_at is not None and run_at > now else "pending"
    due_at = now if run_at is None else run_at
    cur = db.execute(_INSERT_JOB, (key, target, params_json, state, now, now, priority, due_at, run_at, tick))
    if cur.rowcount:
        return cur.lastrowid or 0, True
    job_id, old_target, old_params, old_run_at, old_priority = db.execute(
        "SELECT id, target, params, run_at, priority FROM jobs WHERE key = ?", (key,)).fetchone()
    conflict = key_conflict(key, job_id, (old_target, old_params), (target, params_json),
                            timing_differences((old_run_at, old_priority), (run_at, priority)))
    if conflict is not None:
        raise conflict
    return job_id, False


def after_prefix(prefix: str) -> str | None:
    """The least string greater than every string that starts with `prefix`
    (None: there is none), in code point order, which is how SQLite compares
    text (its bytes, UTF-8) and PostgreSQL under COLLATE "C"."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop()) + 1
        if last == 0xD800:
            last = 0xE000  # surrogates are never stored
        if last <= 0x10FFFF:
            return "".join(chars) + chr(last)
    return None


class Journal:
    """Opening refuses a file that is not a sound Phoenix journal (JournalError,
    naming the file and the way out); `verify=True` adds SQLite's quick_check of
    every page, which costs time in proportion to the journal's size."""

    shared = False  # one master writes it (see base.Store)

    def __init__(self, path: str | Path, *, create: bool = True, verify: bool = False,
                 upgrade: Upgrade = "alone") -> None:
        """`upgrade`: what an open does with a journal of an older schema (see _upgrade)."""
        self.path = Path(path)
        self.upgrade = upgrade
        if not self.path.exists():
            if not create and not journal_present(self.path):
                raise JournalError(f"no journal at {self.path}")
            _create(self.path)  # refuses if a write-ahead log is left there, even with create=False
        self.identity = _identity(self.path)  # the file this journal writes, to notice it replaced
        if self.identity not in _OPEN_HERE:  # (if open here, it was checked, and reading it now drops locks)
            _check_file(self.path)
        self._synced_wal: tuple[int, int] | None = None  # the write-ahead log whose name is on disk
        self._owed_batch_callbacks: list[tuple[int, int, int, str]] = []  # see take_owed_batch_callbacks
        try:
            # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE).
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        except sqlite3.Error as exc:
            raise self.error(exc) from None
        # Text another tool stored that is not UTF-8 is read, not refused: sqlite3's
        # own decoding raised on the whole read, so one such row stopped every job
        # (an outage for ever) and every command. Its bytes come back as lone
        # surrogates, which visible() shows as \udcXX and specs.text_problem names.
        self.db.text_factory = _text_or_surrogates
        self._counted = False
        try:
            self._check_identity()  # first: a file that is not ours is not even switched to WAL
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash of any process; a power
            # cut can lose the last commits (never corrupts them). Commits that are
            # acknowledged to someone are made durable one by one: see transaction().
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            if _needs_columns(self.db):
                with self.transaction() as db:
                    _add_columns(db)  # a journal of an older Phoenix gets the columns this one writes
            if _needs_scale_schema(self.db):
                with self.transaction() as db:
                    _add_scale_schema(db)  # once, on the first open by this Phoenix: reads every job
            self._upgrade()
            if verify:
                self._quick_check()
        except BaseException as exc:
            self.db.close()
            if isinstance(exc, sqlite3.Error):
                raise self.error(exc) from None
            raise
        if self.identity is not None:
            _OPEN_HERE[self.identity] = _OPEN_HERE.get(self.identity, 0) + 1
            self._counted = True

    def _check_identity(self) -> None:
        """Phoenix's application_id and a schema version this code reads. A
        journal of a Phoenix released before the stamp (its tables, no id) is
        stamped now."""
        (application_id,) = self.db.execute("PRAGMA application_id").fetchone()
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if application_id not in (0, APPLICATION_ID):
            raise _foreign(self.path, application_id)
        if application_id == 0:
            if not _TABLES <= tables:
                raise damaged(self.path, "it is an SQLite database but not a Phoenix journal (no application_id, "
                                         "and not Phoenix's tables): is this the right state directory?")
            row = self.db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is None or row[0] != "1":
                raise damaged(self.path, f"its schema version is {row[0] if row else 'missing'}, where a "
                                         f"Phoenix journal made before application_id has version 1")
            with self.transaction() as db:
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute("PRAGMA user_version = 1")  # what its tables are: upgraded from there on
            return
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"the journal {self.path} was written by a newer Phoenix (journal version {version}; this Phoenix "
                f"reads version {SCHEMA_VERSION} and older): run the newer release, or restore a copy of the "
                f"journal made by this one. The file is left untouched"
            )
        if version < 1 or not _TABLES <= tables:
            missing = ", ".join(sorted(_TABLES - tables)) or "none"
            raise damaged(self.path, f"it is marked as a Phoenix journal but its header or schema is wrong "
                                     f"(version {version}, missing tables: {missing})")

    def _upgrade(self) -> None:
        """A journal of an older version is brought to this one on open, each
        step and the new user_version in one transaction: a crash leaves the
        old version whole, and the next open does it again. Any open, not
        only the master's (a submit from this release writes the new columns),
        but never under a running master, which is of the older release (one
        of this release upgraded the journal when it opened it): that master
        would go on writing a schema it does not know (an outside check: an
        old master ran a batch's callback as on_failed). The master itself
        opens with upgrade="always"; the preflight reads with "never".
        (Going back to a release before it needs a copy made before: that
        release refuses a newer journal.)"""
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        if version >= SCHEMA_VERSION or self.upgrade == "never":
            return
        if self.upgrade == "alone" and lock_held(StatePaths(self.path.parent).lockfile):
            raise JournalError(
                f"the journal {self.path} is of schema version {version}, and the master running on it is of an "
                f"older Phoenix than this one ({SCHEMA_VERSION}): move that master onto this release first "
                f"(`phoenix reload`, or SIGUSR2, with this release installed), or stop it; then run this again")
        with self.transaction(durable=True) as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()  # another process may have done it
            for step in sorted(v for v in _UPGRADES if version <= v < SCHEMA_VERSION):
                _UPGRADES[step](db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("INSERT INTO meta VALUES ('schema', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                       (str(SCHEMA_VERSION),))

    def _quick_check(self) -> None:
        # O(size of the file): for 100,000 jobs (41 MB) 0.07-0.25 s from the page cache, 0.3-0.4 s from disk.
        problems = [row[0] for row in self.db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            found = " ".join(" ".join(problems).split())[:200]  # one line
            raise damaged(self.path, f"it is damaged: SQLite's integrity check finds {found}")

    def error(self, exc: sqlite3.Error) -> JournalError:
        """What an SQLite error means to the operator: a damaged file, or another failure."""
        text = str(exc)[:200]  # a decoding error quotes the whole damaged value
        if (getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
                or text.startswith("Could not decode")):  # Phoenix only ever writes valid UTF-8
            return damaged(self.path, f"SQLite finds it damaged ({text})")
        return JournalError(f"cannot use the journal {self.path}: {text}")

    def close(self) -> None:
        self.db.close()
        if self._counted and self.identity is not None:
            self._counted = False
            left = _OPEN_HERE[self.identity] - 1
            if left:
                _OPEN_HERE[self.identity] = left
            else:
                del _OPEN_HERE[self.identity]

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        """Close; an SQLite error met while reading or writing becomes a JournalError."""
        self.close()
        if isinstance(exc, sqlite3.Error):
            raise self.error(exc) from None

    # -- transactions -----------------------------------------------------

    class _Transaction:
        def __init__(self, journal: "Journal", durable: bool) -> None:
            self.journal, self.db, self.durable = journal, journal.db, durable

        def __enter__(self) -> sqlite3.Connection:
            if self.durable:
                self.db.execute("PRAGMA synchronous=FULL")  # (not allowed inside a transaction)
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            if not self.durable:
                self.db.execute("ROLLBACK" if exc_type else "COMMIT")
                return
            try:
                self.db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                if not self.db.in_transaction:  # (a failed COMMIT may leave it open: the caller's error says so)
                    self.db.execute("PRAGMA synchronous=NORMAL")
            if not exc_type:
                self.journal._sync_wal_name()

    def transaction(self, durable: bool = False) -> "_Transaction":
        """One write transaction. `durable`: its commit is acknowledged to
        someone (a submitter's exit 0, a child's ack, a callback recorded as
        done, an outbox file about to be removed), so it is on disk before
        COMMIT returns, power cut included: synchronous=FULL for this commit
        fsyncs the write-ahead log, which also makes every earlier commit
        durable (the log is written in order). The others stay NORMAL (no
        fsync: a crash of any process loses nothing, only a power cut may lose
        them, and nobody was told they happened). Per commit rather than per
        connection, so that one durable commit can later stand for several
        acknowledgements (group commit). The cost is one fsync per durable
        commit, measured in bench/RESULTS.md ("Durability"): on its virtual
        disk about 30 -> 280 us of CPU per submit and a few ms of latency;
        no-op jobs through 2 slots, two durable commits each (the attempt
        begun, the finals held), run at half the rate. A callback's done
        record adds none: it rides along in the next finals' commit
        (settler.CallbackSettler.commit_with), one commit per group at most."""
        return self._Transaction(self, durable)

    def _sync_wal_name(self) -> None:
        """SQLite fsyncs the write-ahead log's data, never the directory entry
        of a log it has just created: do it once per log file, or a power cut
        could take the whole file, synced commits and all. A stat per durable
        commit: the log is recreated only after every connection closed."""
        wal = _identity(_wal(self.path))
        if wal is None or wal == self._synced_wal:
            return
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._synced_wal = wal

    # -- submission (any process) ----------------------------------------------

    def submit(self, target: str, params_json: str, key: str | None = None, *, run_at: float | None = None,
               priority: int = 0, tick: float | None = None) -> tuple[int, bool]:
        """Record a job; (job id, True) if new, (existing id, False) if the key
        names the same job (same target, same parameters as canonical JSON,
        same due time and priority). Raises KeyConflict if the key names
        another job. `run_at`: due then (wall clock UTC), `scheduled` until
        then; `tick`: the periodic schedule's tick it is."""
        if key:
            check_key(key)
        key = key or default_key(target, params_json, run_at, priority)
        now = time.time()
        with self.transaction(durable=True) as db:
            return _insert_job(db, key, target, params_json, now, run_at, priority, tick)

    def submit_many(self, jobs: Iterable[tuple[str, str, str]]) -> list[tuple[int, bool]]:
        """Record (target, params JSON, key) jobs in one transaction, as a
        script seeding a batch would; a key that names the same job is left as
        it is, one that names another job raises KeyConflict and records none.
        Returns (job id, created) of each, in order."""
        jobs = list(jobs)
        for _target, _params, key in jobs:
            check_key(key)  # all refused, or all recorded
        now = time.time()
        with self.transaction(durable=True) as db:
            return [_insert_job(db, key, target, params_json, now) for target, params_json, key in jobs]

    # -- the master's writes ----------------------------------------------------

    def pending(self, limit: int) -> list[Job]:
        """Up to `limit` jobs due to run: the highest priority first, then the
        earliest due, then the first submitted."""
        clocks = {**_clocks(), "limit": limit}
        columns = ("-priority, due_at, id, key, target, params, attempts, failures, checkpoint, "
                   f"(SELECT pool FROM pool_targets WHERE target = jobs.target), {_DAMAGED_NUMBER}")
        # One statement (one read of the journal per look, which is once per job):
        # the jobs never put back with a backoff (from the top of jobs_ready), and
        # those whose backoff is over; neither of a full pool (the rest are not held back).
        not_full = f"target NOT IN ({FULL_POOL_TARGETS})"
        rows = self.db.execute(
            f"SELECT * FROM (SELECT {columns} FROM jobs INDEXED BY jobs_ready WHERE {_NO_BACKOFF} "
            f"AND (not_before <= :wall OR {_NOT_A_NUMBER.format('not_before')}) AND {not_full} "
            f"ORDER BY priority DESC, due_at, id LIMIT :limit) UNION ALL "
            f"SELECT * FROM (SELECT {columns} FROM jobs INDEXED BY jobs_backoff WHERE {_IN_BACKOFF} "
            f"AND {_BACKOFF_WAIT} <= 0 AND {not_full} LIMIT :limit)", clocks).fetchall()
        free = dict(self.db.execute("SELECT name, capacity - used FROM pools"))
        jobs = []
        # A damaged row first (its due time may be bytes, which no float sorts with): it fails at once.
        for row in sorted(rows, key=lambda row: row[:3] if row[10] is None else (row[0], -math.inf, row[2])):
            pool = row[9]
            if pool is not None:
                if free.get(pool, 0) <= 0:
                    continue  # its pool's last free slot went to a job before it in this look
                free[pool] -= 1
            jobs.append(Job(row[2], row[3], row[4], row[5], row[6], row[7], row[8], damaged=row[10]))
        return jobs[:limit]

    def promote_due(self) -> int:
        """Scheduled jobs whose due time (wall clock) has come become pending,
        each once: the state's change is the one transition, so a clock step
        back or forth moves when, never how often. Returns how many."""
        now = time.time()
        if self.db.execute("SELECT 1 FROM jobs INDEXED BY jobs_scheduled WHERE state = 'scheduled' AND due_at <= ? "
                           "LIMIT 1", (now,)).fetchone() is None:
            return 0  # (most looks: nothing due, and no write lock taken)
        with self.transaction() as db:
            return db.execute("UPDATE jobs SET state = 'pending', updated_at = ? WHERE state = 'scheduled' "
                              "AND due_at <= ?", (now, now)).rowcount

    def claim(self, generation: int, pid: int | None, start_time: int | None) -> tuple[Job, int] | None:
        """The next due job, its attempt recorded for the child `pid`: (job,
        attempt id), or None. (The master is this journal's only writer, so
        the two steps cannot race; a shared store does it in one statement.)"""
        jobs = self.pending(1)
        if not jobs:
            return None
        return jobs[0], self.begin_attempt(jobs[0], generation, pid, start_time)

    def next_due_in(self) -> float | None:
        """Seconds until the next pending job is due (0 or less: due now), or
        None if nothing is pending."""
        clocks = _clocks()
        waits = []
        row = self.db.execute(f"SELECT not_before FROM jobs WHERE {_NO_BACKOFF} AND NOT "
                              f"{_NOT_A_NUMBER.format('not_before')} ORDER BY not_before LIMIT 1", clocks).fetchone()
        if row is not None:
            waits.append(row[0] - clocks["wall"])
        row = self.db.execute(f"SELECT min({_BACKOFF_WAIT}) FROM jobs INDEXED BY jobs_backoff WHERE {_IN_BACKOFF}",
                              clocks).fetchone()
        if row[0] is not None:
            waits.append(row[0])
        return min(waits, default=None)

    def next_scheduled_at(self) -> float | None:
        """The earliest due time (wall clock UTC) of a scheduled job, through jobs_scheduled."""
        row = self.db.execute("SELECT min(due_at) FROM jobs INDEXED BY jobs_scheduled WHERE state = 'scheduled'"
                              ).fetchone()
        return None if row[0] is None else float(row[0])

    def begin_attempt(self, job: Job, generation: int, pid: int | None, start_time: int | None) -> int:
        """Mark the job running and record its attempt with the child's pid, in
        one transaction after the fork and before the child's go-ahead: a child
        whose pid is not recorded never runs its job (see child.run). pid is
        None only for a fork that failed. Durable: the go-ahead acknowledges
        it to the child, and a journal that lost it (its file system failed,
        the children lived on) would run the job again beside it."""
        now = time.time()
        with self.transaction(durable=True) as db:
            db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (now, job.id),
            )
            row = db.execute("SELECT pool FROM pool_targets WHERE target = ?", (job.target,)).fetchone()
            pool = None if row is None else row[0]
            if pool is not None:  # its slot, held until the attempt's outcome (`pending` left it free)
                db.execute("UPDATE pools SET used = used + 1 WHERE name = ?", (pool,))
            cur = db.execute(
                "INSERT INTO attempts (job_id, n, generation, started_at, started_boot, pid, start_time, pool) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.attempts + 1, generation, now, clock.since_boot(), pid, start_time, pool),
            )
            return cur.lastrowid or 0

    def end_attempt(
        self,
        attempt_id: int,
        job_id: int,
        *,
        outcome: str,
        reason: str | None,
        error: str | None,
        result_json: str | None,
        max_rss_kb: int | None,
        job_state: str,
        counts_as_failure: bool,
        retry_delay: float | None = None,
        callback: str | None,
        attempt_n: int,
        durable: bool = False,
        start_callback: bool = False,
    ) -> tuple[bool, int | None]:
        """Record an attempt's outcome, the job's new state and the callback now
        owed, in one transaction: the outcome is recorded exactly once. Returns
        (False, None) if it was recorded already, else (True, the id of the
        callback now owed or None). `retry_delay`: seconds before the job may
        run again. `durable`: on disk before this returns (the outcome's only
        other copy, an outbox file, is removed next). `start_callback` asks
        nothing here: start_callback's reads cost no round trip."""
        now = time.time()
        if retry_delay is None:
            not_before, not_before_boot, boot = 0.0, None, None
        else:
            not_before = now + retry_delay
            not_before_boot, boot = clock.after(retry_delay)
        # What the job wrote (its error, its result) is data: kept as a text column can (see `storable`).
        reason, error, result_json = storable_or_none(reason), storable_or_none(error), storable_or_none(result_json)
        with self.transaction(durable) as db:
            cur = db.execute(
                "UPDATE attempts SET outcome = ?, reason = ?, error = ?, max_rss_kb = ?, ended_at = ?, "
                "final = NULL WHERE id = ? AND outcome IS NULL",  # the held final is in the job's row now
                (outcome, reason, error, max_rss_kb, now, attempt_id),
            )
            if cur.rowcount == 0:
                return False, None  # already recorded
            db.execute("UPDATE pools SET used = used - 1 WHERE name = (SELECT pool FROM attempts WHERE id = ?) "
                       "AND used > 0", (attempt_id,))  # its pool slot, freed by the outcome and only by it
            db.execute(
                "UPDATE jobs SET state = ?, outcome = ?, result = ?, error = ?, not_before = ?, not_before_boot = ?, "
                "not_before_boot_id = ?, failures = failures + ?, updated_at = ? WHERE id = ?",
                (job_state, outcome, result_json, error, not_before, not_before_boot, boot, int(counts_as_failure),
                 now, job_id),
            )
            batch_callback = self._batch_callback_owed(db, job_id) if job_state in batches.FINAL_STATES else None
            callback_id = None
            if callback is not None:
                cur = db.execute(
                    "INSERT INTO callbacks (job_id, attempt, kind, state, created_at) VALUES (?, ?, ?, 'owed', ?) "
                    "ON CONFLICT (job_id, kind) DO NOTHING",
                    (job_id, attempt_n, callback, now),
                )
                callback_id = cur.lastrowid if cur.rowcount else None
        if batch_callback is not None:  # (committed: a write that failed leaves nothing to start)
            self._owed_batch_callbacks.append(batch_callback)
        return True, callback_id

    def hold_finals(self, finals: list[tuple[int, str]],
                    callbacks_done: Sequence[tuple[int, str | None]] = ()) -> list[bool | None]:
        """Keep running attempts' final messages [(attempt id, JSON)], in one
        transaction, before the master acknowledges them: a child that got the
        ack exits without an outbox file, and a master that dies before it
        records the outcome leaves it here for the next one. The callbacks
        `callbacks_done` [(id, error)] are marked done in the same commit."""
        with self.transaction(durable=True) as db:
            db.executemany("UPDATE attempts SET final = ? WHERE id = ? AND outcome IS NULL",
                           [(data, attempt_id) for attempt_id, data in finals])
            self._callbacks_done(db, callbacks_done)
        return [None] * len(callbacks_done)

    def fail_without_attempt(self, job_id: int, error: str) -> int | None:
        """A job that cannot even be started (unknown target): failed, callback owed."""
        error = storable(error)  # it may quote the job's target or an import error's path
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', outcome = 'error', error = ?, updated_at = ? WHERE id = ?",
                (error, now, job_id),
            )
            cur = db.execute(
                "INSERT INTO callbacks (job_id, attempt, kind, state, created_at) "
                "VALUES (?, 0, 'on_failed', 'owed', ?) ON CONFLICT (job_id, kind) DO NOTHING",
                (job_id, now),
            )
            batch_callback = self._batch_callback_owed(db, job_id)
        if batch_callback is not None:
            self._owed_batch_callbacks.append(batch_callback)
        return cur.lastrowid if cur.rowcount else None

    def callback_started(self, callback_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE callbacks SET runs = runs + 1 WHERE id = ?", (callback_id,))

    def start_callback(self, callback_id: int, job_id: int,
                       n: int) -> tuple[dict[str, Any], str | None, int | None] | None:
        """What the callback is handed (its job's row, its attempt's end), and
        its run counted. One master writes this journal: never fenced."""
        row = self.job_row(job_id)
        assert row is not None  # a job owing a callback is never pruned
        reason, max_rss_kb = self.attempt_end(job_id, n)
        self.callback_started(callback_id)
        return row, reason, max_rss_kb

    def callback_done(self, callback_id: int, error: str | None) -> None:
        with self.transaction(durable=True) as db:
            db.execute(
                "UPDATE callbacks SET state = 'done', error = ?, done_at = ? WHERE id = ?",
                (storable_or_none(error), time.time(), callback_id),
            )

    def callbacks_done(self, done: Sequence[tuple[int, str | None]]) -> list[bool | None]:
        """Mark callbacks done [(callback id, error)] in one durable commit:
        one fsync records every callback that ended meanwhile (group commit)."""
        with self.transaction(durable=True) as db:
            self._callbacks_done(db, done)
        return [None] * len(done)

    @staticmethod
    def _callbacks_done(db: sqlite3.Connection, done: Sequence[tuple[int, str | None]]) -> None:
        if done:
            now = time.time()
            db.executemany("UPDATE callbacks SET state = 'done', error = ?, done_at = ? WHERE id = ?",
                           [(storable_or_none(error), now, callback_id) for callback_id, error in done])

    def owed_callbacks(self) -> list[tuple[int, int, int, str]]:
        """(callback id, job id, attempt, kind) of every callback not yet run to the end."""
        return self.db.execute(
            "SELECT id, job_id, attempt, kind FROM callbacks WHERE state = 'owed' ORDER BY id"
        ).fetchall()

    def open_attempts(self) -> list[OpenAttempt]:
        rows = self.db.execute(
            "SELECT a.id, a.job_id, j.key, j.target, a.n, a.pid, a.start_time, a.generation, a.started_at, "
            "a.started_boot, a.final, a.reason, j.attempts "
            "FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.outcome IS NULL ORDER BY a.id"
        ).fetchall()
        return [OpenAttempt(row[0], row[1], row[2], row[3], _attempt_number(row), row[5], row[6], row[7], row[8],
                            row[9], row[10], ending=noted_ending(row[11])) for row in rows]

    def targets_in_use(self) -> list[tuple[str, int, int]]:
        """(target, pending jobs, running jobs) of every target that jobs not yet ended use."""
        return self.db.execute(
            "SELECT target, sum(state = 'pending'), sum(state = 'running') FROM jobs "
            "WHERE state IN ('pending', 'running') GROUP BY target ORDER BY target"
        ).fetchall()

    def job_row(self, job_id: int) -> dict[str, Any] | None:
        cur = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = cur.fetchone()
        if row is None:
            return None
        return _readable([c[0] for c in cur.description], row)

    def counts(self) -> dict[str, int]:
        """Jobs in each state, from the counts the triggers keep: five rows,
        however many jobs the journal holds."""
        counts = dict.fromkeys(JOB_STATES, 0)
        for state, n in self.db.execute("SELECT state, n FROM job_counts"):
            counts[state] = n
        return counts

    def pending_count(self) -> int:
        """Jobs waiting to run, counted through the jobs_pending index: not a
        read of every job the journal keeps, as `counts` is."""
        count: int = self.db.execute("SELECT count(*) FROM jobs WHERE state = 'pending'").fetchone()[0]
        return count

    def batch_counts(self, run_started: float) -> dict[str, int]:
        """What `--exit-when-done` judges: every pending and running job, and
        the jobs that ended since `run_started` (wall clock): this run's, not
        an earlier run's failures."""
        counts = dict.fromkeys(JOB_STATES, 0)
        for state, n in self.db.execute("SELECT state, count(*) FROM jobs WHERE state IN ('scheduled', 'pending', "
                                        "'running') OR updated_at >= ? GROUP BY state", (run_started,)):
            counts[state] = n
        counts["pending"] += counts.pop("scheduled")  # a delayed job is work the batch still has
        return counts

    def record_event(self, kind: str, generation: int | None, pid: int | None, detail: str | None = None) -> None:
        # Durable: a master's start, stop or hand-over is reported as done (and is rare).
        with self.transaction(durable=True) as db:
            db.execute(
                "INSERT INTO events (at, kind, generation, pid, detail) VALUES (?, ?, ?, ?, ?)",
                (time.time(), kind, generation, pid, storable_or_none(detail)),  # a reason may quote a path
            )

    def count_events(self, kind: str) -> int:
        count: int = self.db.execute("SELECT count(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0]
        return count

    def set_meta(self, **values: Any) -> None:
        with self.transaction() as db:
            for name, value in values.items():
                db.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, json.dumps(value)),
                )

    def meta(self, name: str, default: Any = None, *, counter: bool = False) -> Any:
        """A value the master recorded (JSON); `default` if none was. A row
        another tool damaged is read as absent, with a warning: the master
        writes it afresh once ready. Except a `counter` (the generation):
        JournalError, naming the row and the fix, never a default over it."""
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            return default
        value, problem = _meta_problem(row[0], counter)
        if problem is None:
            return value
        shown = visible(row[0] if isinstance(row[0], str) else repr(row[0]))[:200]
        if counter:
            highest = self.db.execute(
                "SELECT max(generation) FROM (SELECT generation FROM events UNION ALL SELECT generation FROM attempts) "
                "WHERE typeof(generation) = 'integer'").fetchone()[0] or 0
            raise JournalError(
                f"the journal {self.path} has a meta row {name!r} whose value {problem} ({shown}): damaged, or "
                f"written by another tool, and Phoenix will not guess it. The highest {name} its events and attempts "
                f"record is {highest}; set it, then start again: sqlite3 {self.path} \"UPDATE meta SET value = "
                f"'{highest}' WHERE name = '{name}'\"")
        # A sentence, not an event: the operator's commands have no log set up, and print it as it is.
        log.log.warning("the journal %s has a meta row %r whose value %s (%s): damaged, or written by another "
                        "tool; read as not recorded (a master writes it afresh when ready)", self.path, name, problem,
                        shown)
        return default

    # -- reads for status ---------------------------------------------------

    def attempt_end(self, job_id: int, n: int) -> tuple[str | None, int | None]:
        """(reason, max RSS in KiB) recorded for a job's attempt n; (None, None) if none was."""
        row = self.db.execute("SELECT reason, max_rss_kb FROM attempts WHERE job_id = ? AND n = ?",
                              (job_id, n)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def recent_failures(self, limit: int) -> list[dict[str, Any]]:
        """The `limit` jobs that failed last, newest first, with their last attempt's reason and memory."""
        cur = self.db.execute(
            "SELECT j.key, j.target, j.outcome, a.reason, j.error, a.max_rss_kb, j.updated_at AS failed_at "
            "FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.n = j.attempts "
            "WHERE j.state = 'failed' ORDER BY j.updated_at DESC, j.id DESC LIMIT ?", (limit,))
        names = [c[0] for c in cur.description]
        return [_readable(names, row) for row in cur]

    def master_times(self) -> tuple[float | None, float | None]:
        """(when the master that runs, or ran last, first started; when it was
        last replaced, or None): a replacement (USR2) continues a master, a
        start after a stop or a crash begins a new one."""
        row = self.db.execute("SELECT id, at FROM events WHERE kind = 'master_start' ORDER BY id DESC LIMIT 1"
                              ).fetchone()
        if row is None:
            return None, None
        reload = self.db.execute("SELECT max(at) FROM events WHERE kind = 'replaced' AND id > ?", (row[0],)
                                 ).fetchone()
        return row[1], reload[0]

    def status_rows(self, *, state: str | None = None, after: int = 0,
                    limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Jobs in id order: those of `state` if given (through its index),
        from id `after` on (exclusive), at most `limit` (None: no limit)."""
        where = "j.state = :state AND j.id > :after" if state is not None else "j.id > :after"
        cur = self.db.execute(
            "SELECT j.id, j.key, j.target, j.params, j.state, j.attempts, j.outcome, j.result, j.error, "
            "a.pid, l.reason, l.max_rss_kb, l.progress FROM jobs j "
            "LEFT JOIN attempts a ON a.job_id = j.id AND a.outcome IS NULL "
            f"LEFT JOIN attempts l ON l.job_id = j.id AND l.n = j.attempts WHERE {where} ORDER BY j.id LIMIT :limit",
            {"state": state, "after": after, "limit": -1 if limit is None else limit},
        )
        for row in cur:
            (job_id, key, target, params, state, attempts, outcome, result, error, pid, reason, max_rss_kb,
             progress) = map(_as_text, row)
            yield {
                "id": job_id,
                "key": key,
                "target": target,
                "params": stored_json(params),
                "state": state,
                "attempt": attempts,
                "pid": pid if state == "running" else None,
                "outcome": outcome,
                "result": stored_json(result) if result is not None else None,
                "error": error,
                "reason": reason,  # of the last attempt: SIGSEGV, exit code 3, heartbeat_timeout ...
                "max_rss_kb": max_rss_kb,  # of the last attempt that ended, when known
                "progress": progress,  # JSON [done, total, note]: the last attempt's phoenix.progress()
            }

    def timeline_recent(self, limit: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
        """What `phoenix report` draws, bounded: (the `limit` jobs that last
        changed among those that ran or failed before any attempt, in id order;
        their attempts; how many pending jobs wait for a first attempt). Read
        through the updated_at and state indexes, never every job."""
        cur = self.db.execute(
            "SELECT id AS job_id, key, target, state, attempts, error, updated_at FROM jobs "
            "WHERE attempts > 0 OR state = 'failed' ORDER BY updated_at DESC, id DESC LIMIT ?", (limit,))
        names = [c[0] for c in cur.description]
        jobs = sorted((_readable(names, row) for row in cur), key=lambda job: job["job_id"])
        cur = self.db.execute(
            "SELECT a.job_id, j.key, a.n, a.pid, a.started_at, a.ended_at, a.outcome, a.reason, a.error, a.progress "
            "FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.job_id IN (SELECT value FROM json_each(?)) "
            "ORDER BY a.job_id, a.n", (json.dumps([job["job_id"] for job in jobs]),))
        names = [c[0] for c in cur.description]
        attempts = [_readable(names, row) for row in cur]
        (unstarted,) = self.db.execute("SELECT count(*) FROM jobs WHERE state = 'pending' AND attempts = 0"
                                       ).fetchone()
        return jobs, attempts, unstarted

    def timeline_events(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT at, kind, generation, pid, detail FROM events ORDER BY at")
        names = [c[0] for c in cur.description]
        return [_readable(names, row) for row in cur]

    # -- the operator's reads and writes (phoenix jobs, show, retry, cancel, prune) -----------

    def list_jobs(self, *, state: str | None, target: str | None, since: float | None,
                  limit: int, after: tuple[float, int] | None = None,
                  key_prefix: str | None = None, batch_id: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """(up to `limit` jobs, last changed first, how many matched in all);
        each with its last attempt's outcome and reason. `after` (updated_at,
        id) of the last job of a page: the jobs after it (and "in all" counts
        from there). `key_prefix`: only the jobs whose key starts with it, a
        range of the key's index. Read through the updated_at indexes: a page
        costs its rows."""
        if (target is not None and unstorable(target)) or (key_prefix is not None and unstorable(key_prefix)):
            return [], 0  # no job has it (check_target_form and check_key refuse it at submit)
        conditions: list[str] = []
        args: list[Any] = []
        for column, value in (("j.state = ?", state), ("j.target = ?", target), ("j.updated_at >= ?", since),
                              ("j.batch_id = ?", batch_id)):
            if value is not None:
                conditions.append(column)
                args.append(value)
        if key_prefix:
            # A range, not LIKE: no wildcard in a key to escape, and SQLite reads it from the key's index.
            conditions.append("j.key >= ?")
            args.append(key_prefix)
            beyond = after_prefix(key_prefix)
            if beyond is not None:
                conditions.append("j.key < ?")
                args.append(beyond)
        if after is not None:
            # The first term is the index's range; the second leaves out the page's jobs of the same time.
            conditions.append("j.updated_at <= ? AND (j.updated_at < ? OR j.id < ?)")
            args.extend((after[0], after[0], after[1]))
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        if target is None and since is None and after is None and not key_prefix and batch_id is None:  # kept counts
            counts = self.counts()
            total = counts.get(state, 0) if state is not None else sum(counts.values())
        else:
            (total,) = self.db.execute(f"SELECT count(*) FROM jobs j {where}", args).fetchone()
        cur = self.db.execute(
            "SELECT j.id, j.key, j.target, j.state, j.attempts, j.outcome, a.reason, j.created_at, j.updated_at "
            f"FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.n = j.attempts {where} "
            "ORDER BY j.updated_at DESC, j.id DESC LIMIT ?", [*args, limit])
        names = [c[0] for c in cur.description]
        return [_readable(names, row) for row in cur], total

    def job_by_key(self, key: str) -> dict[str, Any] | None:
        where = _where_key(key)
        if where is None:
            return None
        cur = self.db.execute(f"SELECT * FROM jobs WHERE {where[0]}", where[1])
        row = cur.fetchone()
        return None if row is None else _readable([c[0] for c in cur.description], row)

    def attempts_of(self, job_id: int) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT n, generation, pid, started_at, ended_at, outcome, reason, error, max_rss_kb, progress "
            "FROM attempts WHERE job_id = ? ORDER BY n", (job_id,))
        names = [c[0] for c in cur.description]
        return [_readable(names, row) for row in cur]

    def retry(self, keys: list[str] | None, target: str | None = None, fresh: bool = False) -> list[str]:
        """Failed and cancelled jobs back to pending with a fresh retry budget
        (their attempts stay, numbered on), in one transaction: the named
        `keys` (all or none: RetryRefused names a key that cannot be), or
        with None every failed job (of `target`), never a cancelled one.
        `fresh`: their checkpoints go too (they start from the beginning).
        Returns the keys."""
        if target is not None and unstorable(target):
            return []  # no job has it (check_target_form refuses it at submit)
        with self.transaction(durable=True) as db:
            if keys is None:
                extra, args = ("AND target = ?", [target]) if target is not None else ("", [])
                # (a key another tool stored as bytes: its text, in what this says and returns)
                rows = [(job_id, _as_text(key)) for job_id, key in db.execute(
                    f"SELECT id, key FROM jobs WHERE state = 'failed' {extra} ORDER BY id", args)]
            else:
                rows = []
                for key in dict.fromkeys(keys):
                    where = _where_key(key)
                    if where is None:
                        raise RetryRefused(f"no job with key {key!r}")
                    row = db.execute(f"SELECT id, key, state FROM jobs WHERE {where[0]}", where[1]).fetchone()
                    if row is None:
                        raise RetryRefused(f"no job with key {key!r}")
                    if row[2] not in ENDED_BADLY:
                        raise RetryRefused(f"job {key!r} is {_as_text(row[2])}: only failed or cancelled jobs can "
                                           "be retried")
                    rows.append((row[0], _as_text(row[1])))
            for job_id, key in rows:
                if db.execute(f"SELECT 1 FROM callbacks c JOIN jobs j ON j.id = c.job_id WHERE c.job_id = ? AND "
                              f"c.state = 'owed' AND NOT {WITHDRAWN_WITH_ITS_CANCEL}", (job_id,)).fetchone():
                    raise RetryRefused(f"job {key!r} still has a callback owed (it runs when a master runs): "
                                       "retry it once that has run")
                batches.sqlite_refuse_reopen_owed(db, job_id, key)
            now = time.time()
            for job_id, _key in rows:
                # The callbacks that ran for its end go, so that its next end calls them again.
                db.execute("DELETE FROM callbacks WHERE job_id = ?", (job_id,))
                # A delayed job cancelled before its time waits for it again.
                db.execute("UPDATE jobs SET state = CASE WHEN due_at > ? THEN 'scheduled' ELSE 'pending' END, "
                           "failures = 0, not_before = 0, not_before_boot = NULL, "
                           "not_before_boot_id = NULL, updated_at = ? WHERE id = ?", (now, now, job_id))
                if fresh:
                    db.execute("UPDATE jobs SET checkpoint = NULL, checkpoint_at = NULL WHERE id = ?", (job_id,))
        return [key for _id, key in rows]

    def last_tick(self, target: str, before: float | None = None) -> tuple[float, str] | None:
        """(tick, state) of the periodic schedule of `target`'s latest tick
        that has a job (before `before`, if given); None if none has.
        Through jobs_ticks: the cost of one row."""
        row = self.db.execute("SELECT tick, state FROM jobs INDEXED BY jobs_ticks WHERE target = ? "
                              "AND tick IS NOT NULL AND tick < ? ORDER BY tick DESC LIMIT 1",
                              (target, math.inf if before is None else before)).fetchone()
        return None if row is None else (row[0], row[1])

    def set_pools(self, capacities: dict[str, int],
                  targets: dict[str, str | None]) -> list[tuple[str, int | None, int]]:
        """A master's pools as its configuration says: each pool's capacity,
        and the pool of each target of its code (None: in none now). Returns
        (pool, capacity before or None if new, capacity now) of each change.
        One master writes this journal: the slots held are counted anew
        from its open attempts, so nothing a crash did can leave them wrong."""
        changes = []
        with self.transaction() as db:
            for name, capacity in sorted(capacities.items()):
                row = db.execute("SELECT capacity FROM pools WHERE name = ?", (name,)).fetchone()
                if row is None or row[0] != capacity:
                    changes.append((name, None if row is None else int(row[0]), capacity))
                db.execute("INSERT INTO pools (name, capacity) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                           "SET capacity = excluded.capacity", (name, capacity))
            for target, pool in targets.items():
                if pool is None:
                    db.execute("DELETE FROM pool_targets WHERE target = ?", (target,))
                else:
                    db.execute("INSERT INTO pool_targets VALUES (?, ?) ON CONFLICT (target) DO UPDATE "
                               "SET pool = excluded.pool", (target, pool))
            db.execute("UPDATE pools SET used = (SELECT count(*) FROM attempts a WHERE a.pool = pools.name "
                       "AND a.outcome IS NULL)")
        return changes

    def pools_status(self) -> list[dict[str, Any]]:
        """Each pool's name, capacity and slots in use."""
        cur = self.db.execute("SELECT name AS pool, capacity, used FROM pools ORDER BY name")
        names = [c[0] for c in cur.description]
        return [_readable(names, row) for row in cur]

    # -- long jobs (docs/long-jobs.md) -------------------------------------------

    def save_checkpoints(self, saves: list[tuple[int, int, int, str]]) -> None:
        """(job id, attempt number, seq, JSON) checkpoints, durable when this
        returns (each is acknowledged to its child next), in one transaction."""
        now = time.time()
        # SQLite keeps what another tool writes: a count or mark that is not a
        # number (never Phoenix's) compares as no number does, and would have
        # matched no row, so an acknowledged checkpoint was silently not kept.
        damaged = ("typeof(attempts) <> 'integer' OR typeof(checkpoint_attempt) NOT IN ('integer', 'null') "
                   "OR typeof(checkpoint_seq) NOT IN ('integer', 'null')")
        where = f"({SAVE_CHECKPOINT_WHERE.format(n=':n', seq=':seq')} OR {damaged})"
        with self.transaction(durable=True) as db:
            db.executemany(f"UPDATE jobs SET checkpoint = :cp, checkpoint_at = :at, checkpoint_attempt = :n, "
                           f"checkpoint_seq = :seq WHERE id = :job AND {where}",
                           [{"job": job_id, "n": n, "seq": seq, "cp": text, "at": now}
                            for job_id, n, seq, text in saves])

    def checkpoint_of(self, job_id: int) -> str | None:
        """The job's last checkpoint (JSON), for its next attempt's order."""
        row = self.db.execute("SELECT checkpoint FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    def save_progress(self, reported: list[tuple[int, str]]) -> None:
        """(attempt id, JSON [done, total, note]) of running attempts, in one
        transaction: not durable (only shown; the next report replaces it)."""
        with self.transaction() as db:
            db.executemany("UPDATE attempts SET progress = ? WHERE id = ?", [(text, a) for a, text in reported])

    # -- batches (batches.py) -------------------------------------------------------

    def submit_to_batch(self, name: str, jobs: Iterable[tuple[Any, ...]]) -> list[tuple[int, bool]]:
        """Record jobs (batches.Member: target, params JSON, key, due time,
        priority) as members of the open batch `name` (opened now if new), in
        one transaction; as submit_many, plus BatchRefused for a closed batch
        or a key that names a job outside it."""
        jobs = batches.members(jobs)
        for job in jobs:
            check_key(job.key)
        now = time.time()
        with self.transaction(durable=True) as db:
            batch_id = batches.sqlite_open(db, name, now)
            submitted = []
            for target, params_json, key, run_at, priority in jobs:
                job_id, created = _insert_job(db, key, target, params_json, now, run_at=run_at, priority=priority)
                batches.sqlite_join(db, batch_id, name, key, job_id, created)
                submitted.append((job_id, created))
            return submitted

    def close_batch(self, name: str) -> str:
        """Close the batch `name` (BatchRefused if there is none); its state
        after: closed, or complete (its on_batch_complete owed) if every
        member has ended."""
        with self.transaction(durable=True) as db:
            return batches.sqlite_close(db, name, time.time())

    def batches(self, name: str | None = None, batch_id: int | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
        """Batches newest first (or the one named, or of that id; at most
        `limit`) with their jobs counted by state."""
        found = batches.sqlite_batches(self.db, name, batch_id, limit)
        for batch in found:  # a member's state another tool stored as bytes counts under its text
            counts: dict[str, int] = {}
            for state, n in batch["counts"].items():
                counts[_as_text(state)] = counts.get(_as_text(state), 0) + n
            batch["counts"] = counts
        return [_readable(list(batch), batch.values()) for batch in found]

    def batch_jobs(self, batch_id: int) -> list[dict[str, Any]]:
        """The batch's jobs in id order, each with its last attempt's reason."""
        return [_readable(list(job), job.values()) for job in batches.sqlite_jobs(self.db, batch_id)]

    @staticmethod
    def _batch_callback_owed(db: sqlite3.Connection, job_id: int) -> tuple[int, int, int, str] | None:
        """After a job's final state: the batch callback its end made owed (the
        trigger's), if it completed its batch; one lookup through the callbacks' key."""
        row: tuple[int, int, int, str] | None = db.execute(
            "SELECT id, job_id, attempt, kind FROM callbacks WHERE job_id = ? AND kind = ? AND state = 'owed'",
            (job_id, batches.KIND)).fetchone()
        return row

    def take_owed_batch_callbacks(self) -> list[tuple[int, int, int, str]]:
        """(callback id, job id, attempt, kind) of the batch callbacks this
        master's outcomes made owed since the last call: the master starts
        them (as the job callback end_attempt returns)."""
        owed, self._owed_batch_callbacks = self._owed_batch_callbacks, []
        return owed

    def request_cancel(self, attempt_id: int) -> None:
        """A running attempt is being cancelled: noted on it (its `reason`,
        until its outcome replaces it), so that a master that takes it over
        mid-cancel (an in-place replacement, a restart after a crash) ends it
        as cancelled too, rather than re-running a job the operator cancelled."""
        self.note_kill(attempt_id, KillReason.CANCELLED)

    def note_kill(self, attempt_id: int, reason: KillReason) -> None:
        """A running attempt is being killed (TERM sent, KILL after kill_grace):
        the reason noted on it (its `reason`, until its outcome replaces it), so
        that a master that takes it over mid-kill ends it for that reason too
        (OpenAttempt.ending), rather than as the job's error or as lost."""
        with self.transaction(durable=True) as db:
            db.execute("UPDATE attempts SET reason = ? WHERE id = ? AND outcome IS NULL", (str(reason), attempt_id))

    def cancel_pending(self, key: str) -> str | None:
        """Cancel the job if it is pending, and owe its `on_failed` in the same
        transaction (as for a cancelled running job: every cancelled job gets
        one; its attempt is the last that ran, 0 if none did). Returns its
        state before (None: no such job)."""
        where = _where_key(key)
        if where is None:
            return None
        with self.transaction(durable=True) as db:
            row = db.execute(f"SELECT id, state FROM jobs WHERE {where[0]}", where[1]).fetchone()
            if row is None:
                return None
            job_id, state = row
            if state in WAITING:
                now = time.time()
                db.execute("UPDATE jobs SET state = 'cancelled', outcome = 'cancelled', error = ?, updated_at = ? "
                           "WHERE id = ?", (f"{CANCELLED_REASON} before it ran", now, job_id))
                db.execute("INSERT INTO callbacks (job_id, attempt, kind, state, created_at) "
                           "SELECT ?, COALESCE(MAX(n), 0), 'on_failed', 'owed', ? FROM attempts WHERE job_id = ? "
                           "ON CONFLICT (job_id, kind) DO NOTHING", (job_id, now, job_id))
            return str(_as_text(state))

    def prune(self, *, finished_before: float, failed_before: float | None, batch: int = 500,
              ) -> dict[str, int]:
        """Delete finished jobs last changed before `finished_before` (and
        failed and cancelled ones before `failed_before`, if given) with their
        attempts and callbacks, and the master events older than
        `finished_before`. Never a pending or running job, nor one with a
        callback owed, nor a member of a batch that is not complete (its
        counts and its on_batch_complete need it), nor the newest job (see
        NOT_NEWEST). `batch` jobs per transaction, so that a running master
        waits at most one short transaction for the journal."""
        removed = {"jobs": 0, "attempts": 0, "callbacks": 0, "events": 0}
        ended = "(state = 'finished' AND updated_at < :finished)"
        if failed_before is not None:
            ended += f" OR (state IN {ENDED_BADLY} AND updated_at < :failed)"
        # NOT INDEXED: read on in id order from the last batch; through the state
        # index, each batch would sort every ended job again (quadratic).
        select = (f"SELECT id FROM jobs NOT INDEXED WHERE ({ended}) AND NOT EXISTS (SELECT 1 FROM callbacks c "
                  f"WHERE c.job_id = jobs.id AND c.state = 'owed') AND {batches.PRUNABLE} AND {NOT_NEWEST} "
                  "AND id > :after ORDER BY id LIMIT :batch")
        bounds = {"finished": finished_before, "failed": failed_before, "batch": batch, "after": 0}
        while True:
            with self.transaction() as db:
                ids = [(job_id,) for (job_id,) in db.execute(select, bounds)]
                bounds["after"] = ids[-1][0] if ids else 0  # the next batch reads on from here
                for table, column in (("attempts", "job_id"), ("callbacks", "job_id"), ("jobs", "id")):
                    # rowcount: the rows deleted (total_changes would add the kept counts' trigger updates)
                    removed[table] += db.executemany(f"DELETE FROM {table} WHERE {column} = ?", ids).rowcount
            if len(ids) < batch:
                break
        with self.transaction() as db:
            # Never the last master's start nor what followed it (its replacements):
            # `status` reads its uptime and last reload from them (master_times).
            removed["events"] = db.execute(
                "DELETE FROM events WHERE at < ? AND id < COALESCE((SELECT max(id) FROM events "
                "WHERE kind = 'master_start'), 9223372036854775807)", (finished_before,)).rowcount
        return removed

    def probe_write(self) -> None:
        """Raise if the journal cannot be written right now, or if its path no
        longer leads to it (used to end an outage: writing to a file that was
        replaced or removed is no recovery)."""
        if _identity(self.path) != self.identity:
            raise OSError(f"{self.path} is no longer the journal this master has open")
        with self.transaction() as db:
            db.execute("INSERT INTO meta VALUES ('probe', '0') ON CONFLICT (name) DO UPDATE SET value = excluded.value")

    def restore_file(self) -> None:
        """Copy this open (possibly unlinked) journal back to its path, which
        must be free. Another file put there (a damaged one, a copy restored
        under a running master, a new journal made in a re-created state
        directory) is never switched to: that would drop this journal's
        history without a word. The outage lasts until that file is moved aside."""
        if _identity(self.path) is not None:
            raise JournalError(
                f"{self.path} is not the journal this master has open: another file was put in its place. The "
                f"master keeps its own journal and starts no job until that file is moved aside (mv {self.path} "
                f"{self.path}.other), then puts its journal back; to use that file instead, stop the master first"
            )
        restored = sqlite3.connect(self.path)
        try:
            self.db.backup(restored)
        finally:
            restored.close()


def _meta_problem(raw: object, counter: bool) -> tuple[Any, str | None]:
    """A meta row's value read back (JSON text), and what makes it unusable,
    or None: another tool may have stored bytes or text that is not JSON, and
    a `counter` (the generation, which each master start increments) must be
    a whole number, never read as a default over the damage."""
    if not isinstance(raw, str):
        return None, f"is not text (a {type(raw).__name__})"
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None, "is text that is not JSON"
    if counter and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        return None, "is JSON that is not a whole number"
    return value, None


def _attempt_number(row: Sequence[Any]) -> Any:
    """An open attempt's number: as stored or, if another tool replaced it
    with bytes or text, its job's count of attempts, which begin_attempt set
    to the same number in the same commit (an open attempt is its job's
    last), said in one line. Without it the attempt's child was never
    recognised, and the job ran for ever."""
    number, job_attempts = row[4], row[12]
    if isinstance(number, int) or not isinstance(job_attempts, int):
        return number
    log.event(logging.WARNING, "attempt_damaged", job=row[2], attempt=job_attempts, column="n",
              value=repr(number)[:100], effect="its number taken from its job's count of attempts")
    return job_attempts


def _needs_columns(db: sqlite3.Connection) -> bool:
    """Read-only: whether `_add_columns` has anything to do (most opens: no,
    and then they take no write lock)."""
    for table, column, _declaration in _ADDED_COLUMNS:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            return True
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'jobs_backoff'").fetchone() is None


def _add_columns(db: sqlite3.Connection) -> None:
    """Bring a journal written by an older Phoenix up to the columns this one
    uses (each added column may be NULL: older rows keep their meaning)."""
    for table, column, declaration in _ADDED_COLUMNS:
        existing = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in existing:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'jobs_backoff'").fetchone() is None:
        db.execute(_BACKOFF_INDEX)  # (only then: a schema write puts page 1 in the write-ahead log)


def _clocks() -> dict[str, Any]:
    return {"wall": time.time(), "boot": clock.boot_id(), "since_boot": clock.since_boot()}
