"""Batches in the store: a row per batch with the number of its jobs that
have no final state yet (`remaining`), and the completion callback.

The count is kept by a trigger on the jobs table, so it changes in the very
transaction that gives a member job its final state (finished, failed,
cancelled), whichever path does it (an outcome, a failure before any attempt,
a cancel, a recovery of a dead master's attempts), and back when `phoenix
retry` takes a member back to pending: no counting pass, nothing to race.
When the count reaches 0 in a closed batch (or a batch is closed with 0
left) the batch is complete and its `on_batch_complete` is owed in the same
transaction, as a row of the callbacks table (kind `on_batch_complete`, on
the member job whose end completed it): the job callbacks' owed/done records,
their fencing on a shared store and their replay after a crash carry it.

On PostgreSQL the callback's owner is the master of the attempt whose outcome
completed the batch (the one that recorded it), and a NOTIFY with the
transaction tells it to run it now.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterable, NamedTuple

from phoenix.errors import UsageError
from phoenix.linux.untrusted import is_number, visible
from phoenix.rules.leases import CALLBACKS_OWED
from phoenix.store.base import RetryRefused

KIND = "on_batch_complete"
FINAL_STATES = ("finished", "failed", "cancelled")
MAX_NAME_CHARS = 200
_FINAL = "('finished', 'failed', 'cancelled')"


class Member(NamedTuple):
    """A job submitted into a batch. A delayed or ranked member (`run_at`,
    `priority`, as `Store.submit` takes them) counts as work the batch still
    has until it ends, as any member does."""

    target: str
    params: str  # JSON
    key: str
    run_at: float | None = None
    priority: int = 0


def members(jobs: Iterable[tuple[Any, ...]]) -> list[Member]:
    """(target, params JSON, key[, run_at, priority]) tuples as Members."""
    return [Member(*job) for job in jobs]


class BatchRefused(UsageError, ValueError):
    """A batch name that cannot be used for what was asked; the message says why and what to do."""


def check_name(name: str) -> None:
    """A batch name is printable text of 1 to MAX_NAME_CHARS characters."""
    if not isinstance(name, str) or not name.strip():
        raise BatchRefused("a batch name must be non-empty text, e.g. feeds-2026-12-07")
    if len(name) > MAX_NAME_CHARS:
        raise BatchRefused(f"batch name of {len(name)} characters is over the limit of {MAX_NAME_CHARS}: "
                           "use a shorter name")
    if visible(name) != name:
        raise BatchRefused(f"batch name '{visible(name)}' contains control characters or text that is not "
                           "valid UTF-8: use printable text")


def closed_refusal(name: str, state: str) -> BatchRefused:
    return BatchRefused(f"batch {name!r} is {state}: it takes no more jobs; name a new batch "
                        f"(a batch name is used once)")


def unknown_refusal(name: str) -> BatchRefused:
    return BatchRefused(f"no batch named {name!r}: see `phoenix batches` for the batches there are")


def not_member_refusal(key: str, job_id: int, name: str, other: str | None) -> BatchRefused:
    where = f"batch {other!r}" if other is not None else "no batch"
    return BatchRefused(f"key {key!r} names job {job_id}, submitted before in {where}, not in batch {name!r}: "
                        f"a job belongs to one batch; submit it under another key")


# -- SQLite -----------------------------------------------------------------------------

_SQLITE_TABLE = """
CREATE TABLE IF NOT EXISTS batches (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    state        TEXT NOT NULL,             -- open | closed | complete
    jobs         INTEGER NOT NULL DEFAULT 0,
    remaining    INTEGER NOT NULL DEFAULT 0, -- member jobs without a final state
    completions  INTEGER NOT NULL DEFAULT 0, -- 2 and on: completed again after a member's retry
    created_at   REAL NOT NULL,
    closed_at    REAL,
    completed_at REAL
)"""

# (UPDATE ... SET reads the row's values from before the update.)
_SQLITE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS batch_member_ended AFTER UPDATE OF state ON jobs "
    f"WHEN new.batch_id IS NOT NULL AND old.state NOT IN {_FINAL} AND new.state IN {_FINAL} BEGIN "
    "UPDATE batches SET remaining = remaining - 1, "
    "state = CASE WHEN remaining = 1 AND state = 'closed' THEN 'complete' ELSE state END, "
    "completed_at = CASE WHEN remaining = 1 AND state = 'closed' THEN new.updated_at ELSE completed_at END, "
    "completions = completions + (remaining = 1 AND state = 'closed') "
    "WHERE id = new.batch_id; "
    "INSERT OR IGNORE INTO callbacks (job_id, attempt, kind, state, created_at) "
    f"SELECT new.id, new.attempts, '{KIND}', 'owed', new.updated_at FROM batches "
    "WHERE id = new.batch_id AND state = 'complete' AND remaining = 0; END",
    "CREATE TRIGGER IF NOT EXISTS batch_member_reopened AFTER UPDATE OF state ON jobs "
    f"WHEN new.batch_id IS NOT NULL AND old.state IN {_FINAL} AND new.state NOT IN {_FINAL} BEGIN "
    "UPDATE batches SET remaining = remaining + 1, completed_at = NULL, "
    "state = CASE WHEN state = 'complete' THEN 'closed' ELSE state END WHERE id = new.batch_id; "
    f"DELETE FROM callbacks WHERE kind = '{KIND}' AND state = 'done' "
    "AND job_id IN (SELECT id FROM jobs WHERE batch_id = new.batch_id); END",
)


def add_to_sqlite(db: sqlite3.Connection) -> None:
    """The batches table, the jobs' batch column and the counting triggers, in
    the caller's transaction (a new journal's, or an upgrade to version 5)."""
    db.execute(_SQLITE_TABLE)
    if "batch_id" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
        db.execute("ALTER TABLE jobs ADD COLUMN batch_id INTEGER REFERENCES batches (id)")
    # In the order `phoenix jobs --batch` pages them: a page costs its rows.
    db.execute("CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, updated_at, id) WHERE batch_id IS NOT NULL")
    for trigger in _SQLITE_TRIGGERS:
        db.execute(trigger)


# Which ended jobs `phoenix prune` may delete: none of a batch that is not
# complete, or whose on_batch_complete has not run yet (its counts and jobs
# are read from its members when it runs). Both stores' SQL.
PRUNABLE = (f"(jobs.batch_id IS NULL OR jobs.batch_id IN (SELECT b.id FROM batches b WHERE b.state = 'complete' "
            f"AND NOT EXISTS (SELECT 1 FROM callbacks c JOIN jobs m ON m.id = c.job_id WHERE c.kind = '{KIND}' "
            f"AND c.state = 'owed' AND m.batch_id = b.id)))")


def sqlite_open(db: sqlite3.Connection, name: str, now: float) -> int:
    """The id of the open batch `name`, made now if there is none; refused if it is closed."""
    check_name(name)
    db.execute("INSERT INTO batches (name, state, created_at) VALUES (?, 'open', ?) ON CONFLICT (name) DO NOTHING",
               (name, now))
    batch_id, state = db.execute("SELECT id, state FROM batches WHERE name = ?", (name,)).fetchone()
    if state != "open":
        raise closed_refusal(name, state)
    return int(batch_id)


def sqlite_join(db: sqlite3.Connection, batch_id: int, name: str, key: str, job_id: int, created: bool) -> None:
    """Make a job just submitted a member of the batch (counted), or check
    that a job submitted before under its key is one already."""
    if created:
        db.execute("UPDATE jobs SET batch_id = ? WHERE id = ?", (batch_id, job_id))
        db.execute("UPDATE batches SET jobs = jobs + 1, remaining = remaining + 1 WHERE id = ?", (batch_id,))
        return
    (member_of,) = db.execute("SELECT batch_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if member_of != batch_id:
        other = db.execute("SELECT name FROM batches WHERE id = ?", (member_of,)).fetchone()
        raise not_member_refusal(key, job_id, name, other[0] if other else None)


def sqlite_close(db: sqlite3.Connection, name: str, now: float) -> str:
    """Close the batch; complete at once (its callback owed, on the member
    that ended last) if no member is left to end. Returns its state now."""
    row = db.execute("SELECT id, state, remaining FROM batches WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise unknown_refusal(name)
    batch_id, state, remaining = row
    if state != "open":
        return str(state)  # closing again changes nothing (a script re-run after its batch was closed)
    if remaining:
        db.execute("UPDATE batches SET state = 'closed', closed_at = ? WHERE id = ?", (now, batch_id))
        return "closed"
    db.execute("UPDATE batches SET state = 'complete', closed_at = ?, completed_at = ?, completions = 1 WHERE id = ?",
               (now, now, batch_id))
    last = db.execute("SELECT id, attempts FROM jobs WHERE batch_id = ? ORDER BY updated_at DESC, id DESC LIMIT 1",
                      (batch_id,)).fetchone()
    if last is not None:  # (an empty batch has no job to hang its callback on: complete, nothing to call)
        db.execute("INSERT OR IGNORE INTO callbacks (job_id, attempt, kind, state, created_at) "
                   f"VALUES (?, ?, '{KIND}', 'owed', ?)", (last[0], last[1], now))
    return "complete"


def sqlite_refuse_reopen_owed(db: sqlite3.Connection, job_id: int, key: str) -> None:
    """`phoenix retry` of a member of a complete batch whose callback has not
    run yet: refused, as a job's own owed callback refuses it."""
    if db.execute(f"SELECT 1 FROM callbacks c JOIN jobs j ON j.id = c.job_id WHERE c.kind = '{KIND}' "
                  "AND c.state = 'owed' AND j.batch_id = (SELECT batch_id FROM jobs WHERE id = ?) "
                  "AND j.batch_id IS NOT NULL", (job_id,)).fetchone():
        raise owed_refusal(key)


def owed_refusal(key: str) -> RetryRefused:
    return RetryRefused(f"job {key!r} is in a batch whose on_batch_complete is still owed (it runs when a master "
                        "runs): retry it once that has run")


SUMMARY_COLUMNS = ("b.id, b.name, b.state, b.jobs, b.remaining, b.completions, b.created_at, b.closed_at, "
                   "b.completed_at")


def summary(row: tuple[Any, ...], counts: dict[str, int]) -> dict[str, Any]:
    batch_id, name, state, jobs, remaining, completions, created_at, closed_at, completed_at = row
    return {"id": int(batch_id), "name": name, "state": state, "jobs": _whole(jobs), "remaining": _whole(remaining),
            "completions": _whole(completions), "counts": counts, "created_at": created_at, "closed_at": closed_at,
            "completed_at": completed_at}


def _whole(value: Any) -> Any:
    """A count as an int; a value another tool put in the column (text,
    bytes) as it is, for a reader to show rather than fail on."""
    return int(value) if is_number(value) else value


def sqlite_batches(db: sqlite3.Connection, name: str | None = None, batch_id: int | None = None,
                   limit: int | None = None) -> list[dict[str, Any]]:
    """Every batch (or the one named, or of id `batch_id`; at most `limit`),
    newest first, with its jobs counted by state."""
    where, args = ("WHERE b.name = ?", (name,)) if name is not None else (
        ("WHERE b.id = ?", (batch_id,)) if batch_id is not None else ("", ()))
    rows = db.execute(f"SELECT {SUMMARY_COLUMNS} FROM batches b {where} ORDER BY b.id DESC LIMIT ?",
                      (*args, -1 if limit is None else limit)).fetchall()
    out = []
    for row in rows:
        counts = {state: n for state, n in db.execute(
            "SELECT state, count(*) FROM jobs WHERE batch_id = ? GROUP BY state ORDER BY state", (row[0],))}
        out.append(summary(row, counts))
    return out


def sqlite_jobs(db: sqlite3.Connection, batch_id: int) -> list[dict[str, Any]]:
    cur = db.execute("SELECT j.id, j.key, j.target, j.state, j.attempts, j.outcome, a.reason, "
                     "j.created_at, j.updated_at FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id "
                     "AND a.n = j.attempts WHERE j.batch_id = ? ORDER BY j.id", (batch_id,))
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


# -- PostgreSQL (the statements; phoenix/store/postgres.py runs them) ----------------------

PG_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS batches (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    state        text NOT NULL,
    jobs         integer NOT NULL DEFAULT 0,
    remaining    integer NOT NULL DEFAULT 0,
    completions  integer NOT NULL DEFAULT 0,
    created_at   double precision NOT NULL,
    closed_at    double precision,
    completed_at double precision
);
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS batch_id bigint REFERENCES batches (id);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, updated_at, id) WHERE batch_id IS NOT NULL;
CREATE OR REPLACE FUNCTION phoenix_batch_member() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    now_s double precision := extract(epoch from clock_timestamp());
    left_now integer;
    state_now text;
BEGIN
    IF NEW.state IN {_FINAL} AND OLD.state NOT IN {_FINAL} THEN
        -- A row lock: two masters ending a batch's last two jobs at once count one after the other.
        UPDATE batches SET remaining = remaining - 1,
            state = CASE WHEN remaining = 1 AND state = 'closed' THEN 'complete' ELSE state END,
            completed_at = CASE WHEN remaining = 1 AND state = 'closed' THEN now_s ELSE completed_at END,
            completions = completions + CASE WHEN remaining = 1 AND state = 'closed' THEN 1 ELSE 0 END
        WHERE id = NEW.batch_id RETURNING remaining, state INTO left_now, state_now;
        IF left_now = 0 AND state_now = 'complete' THEN
            -- Owed by the master whose attempt's outcome this is (its lease epoch: fenced as an outcome is).
            INSERT INTO callbacks (job_id, attempt, kind, state, owner, owner_epoch, created_at)
            SELECT NEW.id, NEW.attempts, '{KIND}', 'owed', a.master, a.epoch, now_s
            FROM (SELECT 1) one LEFT JOIN attempts a ON a.id = NEW.current_attempt
            ON CONFLICT (job_id, kind) DO NOTHING;
            PERFORM pg_notify('phoenix_wake', '{CALLBACKS_OWED}');  -- (postgres.CHANNEL)
        END IF;
    ELSIF OLD.state IN {_FINAL} AND NEW.state NOT IN {_FINAL} THEN
        UPDATE batches SET remaining = remaining + 1, completed_at = NULL,
            state = CASE WHEN state = 'complete' THEN 'closed' ELSE state END
        WHERE id = NEW.batch_id;
        DELETE FROM callbacks WHERE kind = '{KIND}' AND state = 'done'
            AND job_id IN (SELECT id FROM jobs WHERE batch_id = NEW.batch_id);
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS jobs_batch_member ON jobs;
CREATE TRIGGER jobs_batch_member AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.batch_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION phoenix_batch_member()
"""

PG_OPEN = ("INSERT INTO batches (name, state, created_at) VALUES (%s, 'open', extract(epoch from clock_timestamp())) "
           "ON CONFLICT (name) DO NOTHING")
PG_LOCK = "SELECT id, state, remaining FROM batches WHERE name = %s FOR UPDATE"
PG_REFUSE_REOPEN = (f"SELECT 1 FROM callbacks c JOIN jobs j ON j.id = c.job_id WHERE c.kind = '{KIND}' "
                    "AND c.state = 'owed' AND j.batch_id = (SELECT batch_id FROM jobs WHERE id = %s)")
