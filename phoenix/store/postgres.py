"""The PostgreSQL store: many masters, on many hosts, share one database.

It keeps the SQLite journal's semantics (the contract tests in tests/store/
run both) and adds what sharing needs:

- masters: one lease row per master (`node`), renewed on the database's
  clock; `epoch` is bumped when another master recovers it (fencing).
- claim: one statement takes a due pending job (FOR UPDATE SKIP LOCKED in a
  MATERIALIZED CTE), inserts its attempt with the pid of the child that will
  run it, and marks the job running with `current_attempt`, only while the
  claiming master's lease is live.
- fencing: an outcome is recorded only if its attempt is the job's current
  one and belongs to its master's current epoch; otherwise it is kept on the
  attempt (state `late`) and owes no callback. The attempt id is the fencing
  token a job body may pass to its own external writes.
- recovery: any master takes the masters whose lease expired past the grace
  period, bumps their epoch, records their open attempts as lost and puts
  their jobs back under each job's policy, in one transaction.
- wake-ups: NOTIFY once per submitting transaction; each master LISTENs on
  one dedicated connection (leasekeeper.py).

Times are wall-clock seconds (double precision) from the database's clock,
as the SQLite journal's are from the host's. Connections are made lazily, so
a store object made before a fork is never shared with a child; libpq
keepalives, statement_timeout and idle_in_transaction_session_timeout bound
every wait on a lost server.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from phoenix.linux import clock
from phoenix.linux.untrusted import check_key, storable, storable_or_none, stored_json, unstorable
from phoenix.rules.leases import CALLBACKS_OWED, CANCEL_ASKED
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
    CancelRequest,
    Job,
    JobState,
    JournalError,
    NodeTaken,
    OpenAttempt,
    RetryRefused,
    SchemaMismatch,
    StoreUnavailable,
    WeakDurability,
    default_key,
    key_conflict,
    noted_ending,
    scrub,
    timing_differences,
)

try:
    import psycopg
except ModuleNotFoundError as exc:  # a store URL given to a Phoenix installed without the postgres extra
    if exc.name != "psycopg":
        raise
    raise JournalError(f"a PostgreSQL store needs psycopg, which is not installed in this Python "
                       f"({sys.executable}): pip install 'phoenix-procmaster[postgres]'") from None

SCHEMA_VERSION = 5
CHANNEL = "phoenix_wake"
MIGRATE_HINT = "phoenix store migrate --store URL"
STATEMENT_TIMEOUT_MS = 10_000
IDLE_IN_TRANSACTION_MS = 30_000
CONNECT_TIMEOUT = 5

_NOW = "extract(epoch from clock_timestamp())"
# "Due by now" for an index condition: clock_timestamp() is volatile, so a test
# against it is a filter run on every pending job (1.6 s for a claim at
# 1,000,000 pending with nothing due, on the 2-core test machine);
# statement_timestamp() is stable within the statement, and jobs_pending
# answers it (4 ms there).
_DUE_NOW = "extract(epoch from statement_timestamp())"

# Version 3: the claim's order (LIMIT 1 from the top: O(log n) with 100,000
# pending), the scheduled jobs by due time, each schedule's ticks by time.
_V3_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (priority DESC, due_at, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS jobs_scheduled ON jobs (due_at) WHERE state = 'scheduled';
CREATE INDEX IF NOT EXISTS jobs_ticks ON jobs (target, tick) WHERE tick IS NOT NULL
"""
# Version 3's global resource pools (see the SQLite journal's _V3_TABLES).
_V3_POOLS = """
CREATE TABLE IF NOT EXISTS pools (name text PRIMARY KEY, capacity integer NOT NULL, used integer NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS pool_targets (target text PRIMARY KEY, pool text NOT NULL);
ALTER TABLE attempts ADD COLUMN IF NOT EXISTS pool text;  -- the pool whose slot it holds until its outcome
"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS phoenix_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS masters (
    node             text PRIMARY KEY,
    pid              integer NOT NULL,
    generation       integer NOT NULL,
    epoch            bigint NOT NULL DEFAULT 1,      -- bumped by recovery: fences the old one's outcomes
    state            text NOT NULL,                  -- running | draining | degraded | left | stopped | lost
    lease_expires_at timestamptz NOT NULL,           -- the database's clock
    started_at       double precision NOT NULL,
    slots            integer NOT NULL DEFAULT 0,
    slots_used       integer NOT NULL DEFAULT 0,
    app              text,
    instance         text,                           -- the state directory's token: one master per node name
    outage_budget    double precision                -- seconds without the database that cost nothing (status)
);
CREATE TABLE IF NOT EXISTS jobs (
    id              bigserial PRIMARY KEY,
    key             text NOT NULL UNIQUE,
    target          text NOT NULL,
    params          text NOT NULL,
    state           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    failures        integer NOT NULL DEFAULT 0,
    not_before      double precision NOT NULL DEFAULT 0,
    outcome         text,
    result          text,
    error           text,
    created_at      double precision NOT NULL,
    updated_at      double precision NOT NULL,
    current_attempt bigint,
    priority        integer NOT NULL DEFAULT 0,       -- higher first (version 3)
    due_at          double precision NOT NULL DEFAULT 0,  -- when it is due (its submission, if not delayed)
    run_at          double precision,                 -- the due time asked for (--in, --at): a key's identity
    tick            double precision,                 -- a periodic job: its schedule's tick
    checkpoint      text,                            -- JSON: the last phoenix.checkpoint() of its attempts
    checkpoint_at   double precision,
    checkpoint_attempt integer,                      -- the attempt (n) and message (seq) that saved it
    checkpoint_seq  integer
);  -- no fillfactor for HOT: every update changes `state`, which jobs_pending's predicate reads (no HOT)
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (not_before, id) WHERE state = 'pending';
{_V3_INDEXES};
CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated_at);
CREATE TABLE IF NOT EXISTS attempts (
    id           bigserial PRIMARY KEY,
    job_id       bigint NOT NULL REFERENCES jobs (id),
    n            integer NOT NULL,
    master       text NOT NULL,
    epoch        bigint NOT NULL,
    generation   integer NOT NULL,
    pid          integer,
    start_time   bigint,
    started_at   double precision NOT NULL,
    started_boot double precision,
    ended_at     double precision,
    state        text NOT NULL DEFAULT 'running',    -- running | ended | lost | late
    outcome      text,
    reason       text,
    error        text,
    max_rss_kb   bigint,
    late_outcome text,                               -- what a fenced master reported after the fact
    final        text,                               -- JSON: the child's final, held before it is acked
    progress     text,                               -- JSON [done, total, note]: the last phoenix.progress()
    UNIQUE (job_id, n)
);
CREATE INDEX IF NOT EXISTS attempts_open ON attempts (master) WHERE outcome IS NULL;
CREATE TABLE IF NOT EXISTS callbacks (
    id         bigserial PRIMARY KEY,
    job_id     bigint NOT NULL REFERENCES jobs (id),
    attempt    integer NOT NULL,
    kind       text NOT NULL,
    state      text NOT NULL,
    owner      text,                                 -- the master that runs it; another takes it if that one dies
    owner_epoch bigint,                              -- the owner's lease epoch: it runs the callback only in it
    runs       integer NOT NULL DEFAULT 0,
    error      text,
    created_at double precision NOT NULL,
    done_at    double precision,
    UNIQUE (job_id, kind)
);
CREATE INDEX IF NOT EXISTS callbacks_owed ON callbacks (id) WHERE state = 'owed';
CREATE TABLE IF NOT EXISTS events (
    id         bigserial PRIMARY KEY,
    node       text NOT NULL,
    at         double precision NOT NULL DEFAULT {_NOW},
    kind       text NOT NULL,
    generation integer,
    pid        integer,
    detail     text
);
CREATE TABLE IF NOT EXISTS meta (
    node  text NOT NULL,
    name  text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (node, name)
);
{_V3_POOLS}
""" + batches.PG_SCHEMA


# A due pending job, locked for this transaction only if no other master has
# it locked; MATERIALIZED keeps the planner from pushing the lock past LIMIT.
_CLAIM = f"""
WITH lease AS (  -- FOR SHARE: a recovery of this master waits (skips it) until the claim commits
    SELECT epoch FROM masters WHERE node = %(node)s AND epoch = %(epoch)s AND lease_expires_at > now() FOR SHARE
), candidate AS MATERIALIZED (  -- not of a pool with no free slot: the other jobs are not held back
    SELECT id, (SELECT pool FROM pool_targets pt WHERE pt.target = jobs.target) AS pool FROM jobs
    WHERE state = 'pending' AND not_before <= {_DUE_NOW} AND EXISTS (SELECT 1 FROM lease)
      AND target NOT IN ({FULL_POOL_TARGETS})
    ORDER BY priority DESC, due_at, id LIMIT 1
    FOR UPDATE SKIP LOCKED
), slot AS (  -- the pool's row is locked and its `used` read anew: two masters never take its last slot twice
    UPDATE pools SET used = used + 1 WHERE name = (SELECT pool FROM candidate) AND used < capacity RETURNING name
), attempt AS (
    INSERT INTO attempts (job_id, n, master, epoch, generation, pid, start_time, started_at, started_boot, pool)
    SELECT j.id, j.attempts + 1, %(node)s, %(epoch)s, %(generation)s, %(pid)s, %(start_time)s, {_NOW},
           %(since_boot)s, c.pool
    FROM jobs j JOIN candidate c ON c.id = j.id
    WHERE c.pool IS NULL OR EXISTS (SELECT 1 FROM slot)
    RETURNING id, job_id
)
UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, current_attempt = a.id, updated_at = {_NOW}
FROM attempt a WHERE j.id = a.job_id
RETURNING j.id, j.key, j.target, j.params, j.attempts - 1, j.failures, a.id, j.checkpoint
"""

# The outcome counts only from the job's current attempt, of its master's
# current epoch: the rows are locked, so a recovery running at the same
# moment either sees the outcome recorded or fences it. One statement (one
# round trip, one commit): the attempt, the job and the callback owed are
# written only if `fenced` found the attempt; nothing otherwise (late).
# _END_ATTEMPT_STARTING also counts the owed callback's first run, under
# callback_started's condition (this master's lease live, in the epoch the
# locked row holds), and returns the job's row for it: the callback's start
# then costs no statement of its own (start_callback).
_END_ATTEMPT = f"""
WITH fenced AS (
    SELECT a.id FROM attempts a
    JOIN masters m ON m.node = a.master AND m.epoch = a.epoch
    JOIN jobs j ON j.id = a.job_id AND j.current_attempt = a.id
    WHERE a.id = %(attempt)s AND a.job_id = %(job)s AND a.outcome IS NULL
    FOR UPDATE OF a, m, j
), attempt AS (
    UPDATE attempts SET outcome = %(outcome)s, state = 'ended', reason = %(reason)s, error = %(error)s,
           max_rss_kb = %(rss)s, ended_at = {_NOW}, final = NULL
    WHERE id = (SELECT id FROM fenced) RETURNING job_id
), job AS (
    UPDATE jobs SET state = %(state)s, outcome = %(outcome)s, result = %(result)s, error = %(error)s,
           not_before = CASE WHEN %(delay)s::float8 IS NULL THEN 0 ELSE {_NOW} + %(delay)s::float8 END,
           failures = failures + %(failure)s, updated_at = {_NOW}
    FROM attempt WHERE jobs.id = attempt.job_id RETURNING jobs.*
), callback AS (
    INSERT INTO callbacks (job_id, attempt, kind, state, owner, owner_epoch, created_at, runs)
    SELECT id, %(n)s, %(callback)s, 'owed', %(node)s, %(epoch)s, {_NOW},
           CASE WHEN %(start)s AND EXISTS (SELECT 1 FROM masters WHERE node = %(node)s AND epoch = %(epoch)s
                                           AND lease_expires_at > now()) THEN 1 ELSE 0 END
    FROM job WHERE %(callback)s::text IS NOT NULL
    ON CONFLICT (job_id, kind) DO NOTHING RETURNING id, runs
), freed AS (  -- its pool slot, freed by the outcome and only by it (or by the recovery of its master)
    UPDATE pools SET used = used - 1 WHERE used > 0
      AND name = (SELECT a.pool FROM attempts a WHERE a.id = (SELECT id FROM fenced))
)
SELECT EXISTS (SELECT 1 FROM job), (SELECT id FROM callback), (SELECT runs FROM callback)
"""
_END_ATTEMPT_STARTING = _END_ATTEMPT.replace(
    "(SELECT runs FROM callback)\n", "(SELECT runs FROM callback), job.* FROM (SELECT) one LEFT JOIN job ON true\n")

# Masters whose lease expired more than `grace` seconds ago, each taken by
# one recovering master only; their epoch moves on, their open attempts end.
_RECOVER_MASTERS = """
WITH dead AS (
    SELECT node FROM masters
    WHERE lease_expires_at < now() - make_interval(secs => %(grace)s) AND state <> 'lost'
      AND (state <> 'stopped' OR EXISTS (SELECT 1 FROM attempts a WHERE a.master = masters.node AND a.outcome IS NULL))
    FOR UPDATE SKIP LOCKED
)
UPDATE masters m SET epoch = m.epoch + 1, state = 'lost' FROM dead WHERE m.node = dead.node RETURNING m.node
"""
# An attempt whose cancel was requested (reason 'cancelled': `phoenix cancel`
# from any host, its master gone before it ended it) ends `cancelled`, and its
# job with it: never put back to run.
_RECOVER_ATTEMPTS = f"""
WITH open AS (
    SELECT id, reason IS NOT DISTINCT FROM 'cancelled' AS cancelled FROM attempts
    WHERE master = ANY(%(nodes)s) AND outcome IS NULL FOR UPDATE
)
UPDATE attempts a SET state = 'lost', ended_at = {_NOW},
       outcome = CASE WHEN open.cancelled THEN 'cancelled' ELSE 'lost' END,
       reason = CASE WHEN open.cancelled THEN %(cancelled)s ELSE %(reason)s END,
       error = CASE WHEN open.cancelled THEN %(cancelled_error)s ELSE %(reason)s END
FROM open WHERE a.id = open.id
RETURNING a.id, a.job_id, a.n, open.cancelled
"""

# The renewal; with a grace, it also says whether any master is due for
# recovery (_RECOVER_MASTERS's condition, without taking anything).
_RENEW = """
UPDATE masters SET lease_expires_at = now() + make_interval(secs => %(ttl)s), state = %(state)s,
       slots = %(slots)s, slots_used = %(used)s
WHERE node = %(node)s AND epoch = %(epoch)s
RETURNING pg_notify(%(channel)s, 'ping:' || node),
    %(grace)s::float8 IS NOT NULL AND EXISTS (
        SELECT 1 FROM masters d
        WHERE d.lease_expires_at < now() - make_interval(secs => %(grace)s::float8) AND d.state <> 'lost'
          AND (d.state <> 'stopped' OR EXISTS (SELECT 1 FROM attempts a WHERE a.master = d.node AND a.outcome IS NULL)))
"""

# The pool slots of attempts just ended as lost, freed in the recovery's transaction.
_FREE_SLOTS = """
UPDATE pools p SET used = greatest(p.used - x.n, 0)
FROM (SELECT pool, count(*) AS n FROM attempts WHERE id = ANY(%s) AND pool IS NOT NULL GROUP BY pool) x
WHERE p.name = x.pool
"""

_HOLD_FINAL = "UPDATE attempts SET final = %s WHERE id = %s AND outcome IS NULL"

# Callbacks done, each fenced as callback_done (still owed, this master's from
# the epoch in which it started): the ids marked. The finals held before their
# acks take them along in the same statement (one commit: group commit).
_CALLBACKS_DONE = f"""
UPDATE callbacks c SET state = 'done', error = d.error, done_at = {_NOW}
FROM unnest(%(ids)s::bigint[], %(errors)s::text[], %(epochs)s::bigint[]) AS d(id, error, epoch)
WHERE c.id = d.id AND c.state = 'owed' AND (c.owner IS NULL OR c.owner = %(node)s)
  AND coalesce(c.owner_epoch, d.epoch) = d.epoch
RETURNING c.id
"""
_HOLD_FINAL_WITH_DONE = f"""
WITH held AS (UPDATE attempts SET final = %(final)s WHERE id = %(attempt)s AND outcome IS NULL),
done AS ({_CALLBACKS_DONE})
SELECT id FROM done
"""

# callback_started's fence, and what the callback is handed, in one round trip.
_CALLBACK_FENCE = """
UPDATE callbacks c SET runs = c.runs + 1 FROM masters m WHERE c.id = %(id)s AND c.state = 'owed'
  AND m.node = %(node)s AND m.epoch = %(epoch)s AND m.lease_expires_at > now()
  AND (c.owner IS NULL OR c.owner = m.node) AND coalesce(c.owner_epoch, m.epoch) = m.epoch
RETURNING c.id
"""
_START_CALLBACK = f"""
WITH started AS ({_CALLBACK_FENCE})
SELECT j.*, a.reason AS attempt_reason, a.max_rss_kb AS attempt_max_rss_kb
FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.n = %(n)s
WHERE j.id = %(job)s AND EXISTS (SELECT 1 FROM started)
"""

RECOVERED_REASON = "its master lost its lease"
RECOVERED_CANCEL = f"{CANCELLED_REASON}; {RECOVERED_REASON} before it recorded the end"

# `phoenix cancel` of a running job, from any host: its current attempt is
# marked (as request_cancel marks it: the recovery and a restarted master
# honour it too) and the masters told on commit (NOTIFY naming the attempt).
# An outcome being recorded holds the attempt's row: this waits, then finds
# it ended (outcome set) and marks nothing.
_REQUEST_CANCEL = f"""
UPDATE attempts a SET reason = 'cancelled' FROM jobs j, masters m
WHERE j.key = %(key)s AND j.state = 'running' AND a.id = j.current_attempt AND a.outcome IS NULL
  AND m.node = a.master
RETURNING a.master, m.epoch = a.epoch AND m.state <> 'lost' AND m.lease_expires_at > now(),
          pg_notify(%(channel)s, '{CANCEL_ASKED}' || a.id)
"""


class PgStore:
    """One master's (or one command's) handle on the shared store. `node`
    names the master; commands and clients that only submit or read have none."""

    shared = True

    def __init__(self, url: str, *, node: str | None = None, lease_ttl: float = 30.0,
                 check_schema: bool = True, reads_only: bool = False) -> None:
        self.url = url
        # A command that only reads (status, jobs, show) acknowledges nothing: a weak
        # synchronous_commit does not lock the operator out of looking (check_durability).
        self.reads_only = reads_only
        self.node = node or ""
        self.lease_ttl = lease_ttl
        self.epoch = 0
        self.check_schema = check_schema
        self._conn: psycopg.Connection[Any] | None = None
        self._connected = False  # a connection was made once: a later failure to connect is an outage
        self._cur: psycopg.Cursor[Any] | None = None  # the connection's kept cursor (see _one)
        self._one_statement = _OneStatement(self)
        self._pid = os.getpid()
        self.late_outcomes = 0
        self.last_recovery: tuple[list[str], int] = ([], 0)  # (masters, attempts) the last recover() took
        self.recovery_due = False  # the last renewal saw a master whose lease is gone past the grace
        self._callback_epochs: dict[int, int] = {}  # callback id -> the lease epoch it started in
        # Callbacks whose run the outcome's statement counted: what start_callback hands them.
        self._started_callbacks: dict[int, tuple[dict[str, Any], str | None, int | None]] = {}
        self.connect()  # fails early, with one line, if the URL or server is wrong

    # -- connections ---------------------------------------------------------------

    def _new_connection(self) -> psycopg.Connection[Any]:
        return connect(self.url, network_timeout=network_timeout(self.lease_ttl))

    def connect(self) -> psycopg.Connection[Any]:
        if self._conn is not None and self._pid == os.getpid() and not self._conn.closed:
            return self._conn
        self._pid = os.getpid()
        try:
            conn = self._new_connection()
            try:
                if not self.reads_only:
                    check_durability(conn, first=not self._connected)
                if self.check_schema:
                    check_version(conn, self.url)
            except BaseException:
                conn.close()
                raise
        except JournalError as exc:
            if not self._connected:
                raise  # the first connection: the command, or the master's start, refuses with the reason
            # A running master reconnecting finds the schema moved on under it (or a pooler put in
            # between): an outage, said once by the outage machinery and retried, never a crash.
            raise StoreUnavailable(f"PostgreSQL store: {exc}") from None
        self._conn = conn
        self._connected = True
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction; a lost connection becomes StoreUnavailable (an
        outage), and the next call connects again."""
        try:
            conn = self.connect()
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop()
            raise StoreUnavailable(f"PostgreSQL store: {one_line(exc)}") from None

    def _one(self) -> "_OneStatement":
        """For ONE statement: on the autocommit connection it is its own
        transaction, so an explicit BEGIN and COMMIT would only add two round
        trips (and two statements) to each call. It runs on the connection's
        one kept cursor: a master sends a few statements per job, and a new
        cursor and a generator context for each were a tenth of its CPU in
        the store (py-spy of a master in the e2e benchmark)."""
        return self._one_statement

    def _cursor(self) -> psycopg.Cursor[Any]:
        conn = self.connect()
        if self._cur is None or self._cur.connection is not conn:
            self._cur = conn.cursor()
        return self._cur

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None
        self._cur = None

    def close(self) -> None:
        self._drop()
        self.close_listener()

    # -- wake-ups: one dedicated LISTEN connection ------------------------------------

    _listener: psycopg.Connection[Any] | None = None

    def open_listener(self) -> int:
        """Connect the listening connection; its file descriptor, for the master's selector."""
        self.close_listener()
        conn = connect(self.url, network_timeout=network_timeout(self.lease_ttl))
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            conn.close()
            raise StoreUnavailable(f"PostgreSQL store: {one_line(exc)}") from None
        self._listener = conn
        return conn.fileno()

    def read_notifies(self) -> list[str]:
        """The payloads that arrived on the listening connection (without waiting)."""
        if self._listener is None:
            return []
        try:
            return [n.payload for n in self._listener.notifies(timeout=0)]
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close_listener()
            raise StoreUnavailable(f"PostgreSQL store listener: {one_line(exc)}") from None

    def close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
        self._listener = None

    def __enter__(self) -> "PgStore":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        self.close()

    def probe_write(self) -> None:
        with self._one() as cur:
            cur.execute("SELECT 1")

    # -- masters and leases ------------------------------------------------------------

    def register_master(self, pid: int, generation: int, started_at: float, slots: int, app: str | None,
                        *, instance: str | None = None, grace: float = 0.0,
                        outage_budget: float | None = None) -> int:
        """This master's lease row, live for a ttl from now; returns its epoch.
        A master that starts again under the same node from the same state
        directory (`instance`: its token) keeps the epoch (its running
        attempts are its own) unless a recovery moved it on. Another instance
        is refused (NodeTaken) while the node's lease is live or expired less
        than `grace` ago (its children may still be running); once it may
        take the node, the epoch moves on (the old instance is fenced) and the
        node's open attempts come with it, to be adopted or ended as lost."""
        args = {"node": self.node, "pid": pid, "gen": generation, "ttl": self.lease_ttl, "started": started_at,
                "slots": slots, "app": app, "instance": instance, "grace": grace, "budget": outage_budget}
        with self._tx() as cur:
            for _race in range(2):  # a row inserted meanwhile by another instance: look again, once
                cur.execute(
                    "SELECT instance, pid, state, lease_expires_at > now() - make_interval(secs => %(grace)s), "
                    "extract(epoch from lease_expires_at - now()) FROM masters WHERE node = %(node)s FOR UPDATE",
                    args)
                held = cur.fetchone()
                if held is None:
                    cur.execute(
                        "INSERT INTO masters (node, pid, generation, state, lease_expires_at, started_at, slots, app, "
                        "instance, outage_budget) VALUES (%(node)s, %(pid)s, %(gen)s, 'running', "
                        "now() + make_interval(secs => %(ttl)s), %(started)s, %(slots)s, %(app)s, %(instance)s, "
                        "%(budget)s) ON CONFLICT (node) DO NOTHING RETURNING epoch", args)
                    row = cur.fetchone()
                    if row is None:
                        continue
                    self.epoch = int(row[0])
                    return self.epoch
                other_instance, other_pid, state, live, expires_in = held
                another = other_instance is not None and instance is not None and other_instance != instance
                if another and live and state not in ("stopped", "lost"):
                    raise NodeTaken(
                        f"node {self.node!r} is held by another master (pid {other_pid} on another host or state "
                        f"directory, lease {'live for' if expires_in > 0 else 'expired'} "
                        f"{abs(float(expires_in)):.0f}s{'' if expires_in > 0 else ' ago'}): give this one its own "
                        f"name with --node NAME (or node in phoenix.toml); the default, host name and state "
                        f"directory, is the same for containers that share a host name")
                cur.execute(
                    "UPDATE masters SET pid = %(pid)s, generation = %(gen)s, state = 'running', "
                    "lease_expires_at = now() + make_interval(secs => %(ttl)s), started_at = %(started)s, "
                    "slots = %(slots)s, app = %(app)s, instance = %(instance)s, outage_budget = %(budget)s, "
                    "epoch = epoch + %(bump)s WHERE node = %(node)s RETURNING epoch", {**args, "bump": int(another)})
                row = cur.fetchone()
                assert row is not None
                self.epoch = int(row[0])
                if another:  # the old instance's open attempts are ours to adopt or end now, in our epoch
                    cur.execute("UPDATE attempts SET epoch = %s WHERE master = %s AND outcome IS NULL",
                                (self.epoch, self.node))
                return self.epoch
        raise NodeTaken(f"node {self.node!r} is being registered by another master at the same moment: "
                        f"give each master its own name with --node NAME")

    def renew_lease(self, state: str, slots: int, slots_used: int, grace: float | None = None) -> bool:
        """Extend the lease by a ttl on the database's clock, and ping this
        master's listener (a dead listener is noticed when no ping arrives).
        False: the lease was recovered by another master (epoch moved on).
        With `grace`, the same statement also looks whether any master is
        due for recovery (`recovery_due`), so an idle master's period costs
        one statement: recover() runs only when there is something to take."""
        with self._one() as cur:
            cur.execute(_RENEW, {"ttl": self.lease_ttl, "state": state, "slots": slots, "used": slots_used,
                                 "node": self.node, "epoch": self.epoch, "channel": CHANNEL, "grace": grace})
            row = cur.fetchone()
        self.recovery_due = bool(row and row[1])
        return row is not None

    def release_lease(self, state: str) -> None:
        """A stop: `stopped` ends the lease now (its children are gone).
        `left` (children left running for the next master of this node) keeps
        the lease to its expiry: a master started on the node before expiry +
        grace takes them up; otherwise they are recovered, and run elsewhere.
        A stop wakes the other masters: the jobs it interrupted are pending
        (a rolling update's new pod takes them at once, not at its next look)."""
        wake = " RETURNING pg_notify(%s, '')" if state == "stopped" else ""
        with self._one() as cur:
            cur.execute("UPDATE masters SET state = %s, lease_expires_at = CASE WHEN %s = 'stopped' THEN now() "
                        "ELSE lease_expires_at END, slots_used = CASE WHEN %s = 'stopped' THEN 0 ELSE slots_used END "
                        f"WHERE node = %s AND epoch = %s{wake}",
                        (state, state, state, self.node, self.epoch, *((CHANNEL,) if wake else ())))

    def recover(self, grace: float, decide: Callable[[str, int], tuple[str, bool, float | None, str | None]],
                ) -> list[tuple[int, int, int, str]]:
        """Take every master whose lease expired more than `grace` s ago:
        bump its epoch, end its open attempts as lost, and put each job where
        `decide(target, failures)` says: (job state, counts as failure,
        retry delay, callback owed). One transaction; returns the callbacks
        now owed (owned by this master) as (id, job id, attempt, kind)."""
        owed: list[tuple[int, int, int, str]] = []
        self.last_recovery = ([], 0)
        with self._tx() as cur:
            cur.execute(_RECOVER_MASTERS, {"grace": grace})
            nodes = [row[0] for row in cur.fetchall()]
            if not nodes:
                return owed
            cur.execute(_RECOVER_ATTEMPTS, {"nodes": nodes, "reason": RECOVERED_REASON,
                                            "cancelled": CANCELLED_REASON, "cancelled_error": RECOVERED_CANCEL})
            lost = cur.fetchall()
            cur.execute(_FREE_SLOTS, ([int(row[0]) for row in lost],))
            self.last_recovery = (nodes, len(lost))
            for attempt_id, job_id, n, cancelled in lost:
                cur.execute("SELECT target, failures, current_attempt FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
                row = cur.fetchone()
                if row is None or row[2] != attempt_id:
                    continue
                # A cancelled job is the operator's decision (as policy.after_attempt takes it): never re-run.
                cancel: tuple[str, bool, float | None, str | None] = (JobState.CANCELLED.value, False, None,
                                                                       "on_failed")
                job_state, counts, delay, callback = cancel if cancelled else decide(row[0], row[1])
                cur.execute(
                    f"UPDATE jobs SET state = %s, outcome = %s, error = %s, failures = failures + %s, "
                    f"not_before = CASE WHEN %s::float8 IS NULL THEN 0 ELSE {_NOW} + %s::float8 END, "
                    f"updated_at = {_NOW} WHERE id = %s",
                    (job_state, "cancelled" if cancelled else "lost", RECOVERED_CANCEL if cancelled else
                     RECOVERED_REASON, int(counts), delay, delay, job_id))
                if callback is not None:
                    cur.execute(
                        f"INSERT INTO callbacks (job_id, attempt, kind, state, owner, owner_epoch, created_at) "
                        f"VALUES (%s, %s, %s, 'owed', %s, %s, {_NOW}) ON CONFLICT (job_id, kind) DO NOTHING "
                        f"RETURNING id", (job_id, n, callback, self.node, self.epoch))
                    made = cur.fetchone()
                    if made is not None:
                        owed.append((int(made[0]), job_id, n, callback))
            if lost:
                cur.execute("SELECT pg_notify(%s, 'recovered')", (CHANNEL,))
        return owed

    def masters(self) -> list[dict[str, Any]]:
        """Every master's row. `slots_used` is counted from its open attempts
        (the attempts_open index: as many rows as run), not the figure of its
        last renewal, which is up to ttl/3 old (`slots 0/3` while 3 ran)."""
        with self._tx() as cur:
            cur.execute(
                "SELECT node, pid, generation, epoch, state, slots, (SELECT count(*) FROM attempts a "
                "WHERE a.master = m.node AND a.outcome IS NULL) AS slots_used, app, started_at, outage_budget, "
                "extract(epoch from lease_expires_at - now()) AS lease_expires_in, (SELECT value FROM meta "
                "WHERE meta.node = m.node AND name = 'degraded_reason') AS degraded_reason "
                "FROM masters m ORDER BY node")
            rows = _dicts(cur)
        for row in rows:  # a meta value is JSON (set_meta): the reason's text, or null
            row["degraded_reason"] = json.loads(row["degraded_reason"]) if row["degraded_reason"] else None
        return rows

    # -- submission ---------------------------------------------------------------------

    def submit(self, target: str, params_json: str, key: str | None = None, *, run_at: float | None = None,
               priority: int = 0, tick: float | None = None) -> tuple[int, bool]:
        if key:
            check_key(key)
        key = key or default_key(target, params_json, run_at, priority)
        with self._one() as cur:  # the NOTIFY rides on the insert: one round trip
            return self._insert_job(cur, key, target, params_json, notify=True, run_at=run_at, priority=priority,
                                    tick=tick)

    def submit_many(self, jobs: Iterable[tuple[str, str, str]]) -> list[tuple[int, bool]]:
        jobs = list(jobs)
        for _target, _params, key in jobs:
            check_key(key)
        with self._tx() as cur:
            submitted = [self._insert_job(cur, key, target, params_json) for target, params_json, key in jobs]
            cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))  # once per transaction, not per row
        return submitted

    @staticmethod
    def _insert_job(cur: psycopg.Cursor[Any], key: str, target: str, params_json: str, notify: bool = False,
                    run_at: float | None = None, priority: int = 0, tick: float | None = None) -> tuple[int, bool]:
        """The job, or the one its key names already; `notify`: wake the
        masters if it was created (pg_notify runs for the returned row only).
        `run_at` later than the database's clock: `scheduled` until then."""
        wake = ", pg_notify(%(channel)s, '')" if notify else ""
        cur.execute(f"INSERT INTO jobs (key, target, params, state, created_at, updated_at, priority, due_at, run_at, "
                    f"tick) VALUES (%(key)s, %(target)s, %(params)s, CASE WHEN %(run_at)s::float8 > {_NOW} THEN "
                    f"'scheduled' ELSE 'pending' END, {_NOW}, {_NOW}, %(priority)s, "
                    f"COALESCE(%(run_at)s::float8, {_NOW}), %(run_at)s, %(tick)s) "
                    f"ON CONFLICT (key) DO NOTHING RETURNING id{wake}",
                    {"key": key, "target": target, "params": params_json, "run_at": run_at, "priority": priority,
                     "tick": tick, "channel": CHANNEL})
        row = cur.fetchone()
        if row is not None:
            return int(row[0]), True
        cur.execute("SELECT id, target, params, run_at, priority FROM jobs WHERE key = %s", (key,))
        found = cur.fetchone()
        assert found is not None
        job_id, old_target, old_params, old_run_at, old_priority = found
        conflict = key_conflict(key, int(job_id), (old_target, old_params), (target, params_json),
                                timing_differences((old_run_at, old_priority), (run_at, priority)))
        if conflict is not None:
            raise conflict
        return int(job_id), False

    # -- the master's writes ----------------------------------------------------------------

    def claim(self, generation: int, pid: int | None, start_time: int | None) -> tuple[Job, int] | None:
        """Take the next due pending job for the child `pid`, in one statement
        gated on this master's live lease: (job, attempt id), or None."""
        with self._one() as cur:
            cur.execute(_CLAIM, {"node": self.node, "epoch": self.epoch, "generation": generation, "pid": pid,
                                 "start_time": start_time, "since_boot": clock.since_boot()})
            row = cur.fetchone()
        if row is None:
            return None
        return Job(int(row[0]), row[1], row[2], row[3], int(row[4]), int(row[5]), row[7]), int(row[6])

    def pending(self, limit: int) -> list[Job]:
        with self._one() as cur:
            cur.execute(f"SELECT id, key, target, params, attempts, failures, checkpoint FROM jobs "
                        f"WHERE state = 'pending' AND not_before <= {_DUE_NOW} ORDER BY priority DESC, due_at, id "
                        f"LIMIT %s", (limit,))
            return [Job(*row) for row in cur.fetchall()]

    def promote_due(self) -> int:
        """As the SQLite journal's, on the database's clock; SKIP LOCKED: two
        masters promoting at once share the rows, never wait on each other."""
        with self._one() as cur:
            cur.execute(f"UPDATE jobs SET state = 'pending', updated_at = {_NOW} WHERE id IN (SELECT id FROM jobs "
                        f"WHERE state = 'scheduled' AND due_at <= {_DUE_NOW} ORDER BY due_at LIMIT 1000 "
                        f"FOR UPDATE SKIP LOCKED) AND state = 'scheduled'")
            return cur.rowcount

    def next_due_in(self) -> float | None:
        with self._one() as cur:
            cur.execute(f"SELECT min(not_before) - {_NOW} FROM jobs WHERE state = 'pending'")
            row = cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def set_pools(self, capacities: dict[str, int],
                  targets: dict[str, str | None]) -> list[tuple[str, int | None, int]]:
        """As the SQLite journal's, except that the slots in use are left as
        the claims and outcomes of every master keep them (many write them)."""
        changes = []
        with self._tx() as cur:
            for name, capacity in sorted(capacities.items()):  # (in name order: two starting masters never deadlock)
                cur.execute("SELECT capacity FROM pools WHERE name = %s FOR UPDATE", (name,))
                row = cur.fetchone()
                if row is None or row[0] != capacity:
                    changes.append((name, None if row is None else int(row[0]), capacity))
                cur.execute("INSERT INTO pools (name, capacity) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                            "SET capacity = excluded.capacity", (name, capacity))
            for target, pool in sorted(targets.items()):
                if pool is None:
                    cur.execute("DELETE FROM pool_targets WHERE target = %s", (target,))
                else:
                    cur.execute("INSERT INTO pool_targets VALUES (%s, %s) ON CONFLICT (target) DO UPDATE "
                                "SET pool = excluded.pool", (target, pool))
        return changes

    def pools_status(self) -> list[dict[str, Any]]:
        with self._one() as cur:
            cur.execute("SELECT name, capacity, used FROM pools ORDER BY name")
            return [{"pool": name, "capacity": int(capacity), "used": int(used)}
                    for name, capacity, used in cur.fetchall()]

    def next_scheduled_at(self) -> float | None:
        """As the SQLite journal's: the database's wall clock, turned into this
        host's by the difference of the two clocks, read in the same statement."""
        with self._one() as cur:
            cur.execute(f"SELECT min(due_at) - {_NOW} FROM jobs WHERE state = 'scheduled'")
            row = cur.fetchone()
        return None if row is None or row[0] is None else time.time() + float(row[0])

    def last_tick(self, target: str, before: float | None = None) -> tuple[float, str] | None:
        """As the SQLite journal's."""
        with self._one() as cur:
            cur.execute("SELECT tick, state FROM jobs WHERE target = %s AND tick IS NOT NULL AND tick < %s "
                        "ORDER BY tick DESC LIMIT 1", (target, math.inf if before is None else before))
            row = cur.fetchone()
        return None if row is None else (float(row[0]), str(row[1]))

    def begin_attempt(self, job: Job, generation: int, pid: int | None, start_time: int | None) -> int:
        """This job's attempt, if it is still pending (the SQLite journal's
        two-step start, for callers that picked the job with `pending`):
        0 if another master took it first, or this master's lease is not live."""
        with self._tx() as cur:
            cur.execute("SELECT 1 FROM masters WHERE node = %s AND epoch = %s AND lease_expires_at > now() FOR SHARE",
                        (self.node, self.epoch))
            if cur.fetchone() is None:
                return 0  # no live lease: no claim
            cur.execute("SELECT (SELECT pool FROM pool_targets WHERE target = jobs.target) FROM jobs WHERE id = %s "
                        "AND state = 'pending' FOR UPDATE SKIP LOCKED", (job.id,))
            found = cur.fetchone()
            if found is None:
                return 0
            pool = found[0]
            if pool is not None:
                cur.execute("UPDATE pools SET used = used + 1 WHERE name = %s AND used < capacity", (pool,))
                if cur.rowcount == 0:
                    return 0  # its pool has no free slot
            cur.execute(
                f"INSERT INTO attempts (job_id, n, master, epoch, generation, pid, start_time, started_at, "
                f"started_boot, pool) SELECT id, attempts + 1, %s, %s, %s, %s, %s, {_NOW}, %s, %s FROM jobs "
                f"WHERE id = %s RETURNING id",
                (self.node, self.epoch, generation, pid, start_time, clock.since_boot(), pool, job.id))
            row = cur.fetchone()
            assert row is not None
            cur.execute(f"UPDATE jobs SET state = 'running', attempts = attempts + 1, current_attempt = %s, "
                        f"updated_at = {_NOW} WHERE id = %s", (row[0], job.id))
            return int(row[0])

    def end_attempt(self, attempt_id: int, job_id: int, *, outcome: str, reason: str | None, error: str | None,
                    result_json: str | None, max_rss_kb: int | None, job_state: str, counts_as_failure: bool,
                    retry_delay: float | None = None, callback: str | None, attempt_n: int,
                    durable: bool = False, start_callback: bool = False) -> tuple[bool, int | None]:
        """Record an outcome through the fence (see _END_ATTEMPT). A fenced outcome
        is kept on its attempt as `late` and returns (False, None). Every commit
        here is durable (see check_durability): `durable` asks nothing more.
        `start_callback`: the caller starts the callback owed at once, so its
        run is counted here, fenced as callback_started, and what it is handed
        kept for start_callback (one round trip fewer per callback)."""
        reason = storable_or_none(reason)
        with self._one() as cur:
            cur.execute(_END_ATTEMPT_STARTING if start_callback and callback else _END_ATTEMPT, {
                # What the job wrote (its error, its result) is data: kept as a text column can (see `storable`).
                "attempt": attempt_id, "job": job_id, "outcome": outcome, "reason": reason,
                "error": storable_or_none(error), "rss": max_rss_kb, "result": storable_or_none(result_json),
                "state": job_state, "delay": retry_delay,
                "failure": int(counts_as_failure), "callback": callback, "n": attempt_n, "node": self.node,
                "epoch": self.epoch, "start": start_callback})
            row = cur.fetchone()
            assert row is not None
            if row[0]:
                callback_id = int(row[1]) if row[1] is not None else None
                if callback_id is not None and row[2] == 1 and len(row) > 3:  # counted: started under the fence
                    names = [c.name for c in (cur.description or ())[3:]]
                    self._callback_epochs[callback_id] = self.epoch
                    if len(self._started_callbacks) > 64:  # (a start that never came: nothing to keep it for)
                        self._started_callbacks.clear()
                    self._started_callbacks[callback_id] = (dict(zip(names, row[3:], strict=True)), reason,
                                                            max_rss_kb)
                return True, callback_id
            cur.execute(f"UPDATE attempts SET state = 'late', late_outcome = %s, outcome = coalesce(outcome, "
                        f"'lost'), ended_at = coalesce(ended_at, {_NOW}) WHERE id = %s AND state IN "
                        f"('running', 'lost')", (outcome, attempt_id))
            self.late_outcomes += cur.rowcount
            return False, None

    def fail_without_attempt(self, job_id: int, error: str) -> int | None:
        """A job that cannot start here (unknown target, bad parameters, no
        retries left): failed, its claimed attempt (if any) ended, callback owed."""
        error = storable(error)  # it may quote the job's target or an import error's path
        with self._tx() as cur:
            cur.execute(f"UPDATE attempts SET outcome = 'error', state = 'ended', reason = 'cannot start', "
                        f"error = %s, ended_at = {_NOW} WHERE id = (SELECT current_attempt FROM jobs WHERE id = %s) "
                        f"AND outcome IS NULL RETURNING id", (error, job_id))
            cur.execute(_FREE_SLOTS, ([int(row[0]) for row in cur.fetchall()],))
            cur.execute(f"UPDATE jobs SET state = 'failed', outcome = 'error', error = %s, updated_at = {_NOW} "
                        f"WHERE id = %s", (error, job_id))
            cur.execute(f"INSERT INTO callbacks (job_id, attempt, kind, state, owner, owner_epoch, created_at) "
                        f"VALUES (%s, 0, 'on_failed', 'owed', %s, %s, {_NOW}) ON CONFLICT (job_id, kind) DO NOTHING "
                        f"RETURNING id", (job_id, self.node or None, self.epoch if self.node else None))
            row = cur.fetchone()
            return int(row[0]) if row is not None else None

    def callback_started(self, callback_id: int) -> bool:
        """Whether this master may run the callback now: it is still owed, owned
        by this master in its current lease epoch, and that lease is live (a
        callback is fenced like an outcome: a master cut off from the database
        starts none that another master may take over). Counts the run."""
        with self._one() as cur:
            cur.execute(_CALLBACK_FENCE, {"id": callback_id, "node": self.node, "epoch": self.epoch})
            started = cur.fetchone() is not None
        if started:
            self._callback_epochs[callback_id] = self.epoch
        return started

    def start_callback(self, callback_id: int, job_id: int,
                       n: int) -> tuple[dict[str, Any], str | None, int | None] | None:
        """callback_started and the reads of what the callback is handed (its
        job's row, its attempt's end) in one statement: None when fenced. No
        statement when the outcome's counted its run (end_attempt's start_callback)."""
        counted = self._started_callbacks.pop(callback_id, None)
        if counted is not None:
            return counted
        with self._one() as cur:
            cur.execute(_START_CALLBACK, {"id": callback_id, "node": self.node, "epoch": self.epoch, "job": job_id,
                                          "n": n})
            rows = _dicts(cur)
        if not rows:
            return None
        self._callback_epochs[callback_id] = self.epoch
        row = rows[0]
        return row, row.pop("attempt_reason"), row.pop("attempt_max_rss_kb")

    def callback_done(self, callback_id: int, error: str | None) -> bool:
        """Mark it done, only if it is still this master's from the epoch in
        which it started: a master that took it over (its owner's lease
        lapsed) runs it and marks it; False when fenced so."""
        epoch = self._callback_epochs.pop(callback_id, self.epoch)
        with self._one() as cur:
            cur.execute(f"UPDATE callbacks SET state = 'done', error = %s, done_at = {_NOW} WHERE id = %s "
                        f"AND state = 'owed' AND (owner IS NULL OR owner = %s) "
                        f"AND coalesce(owner_epoch, %s) = %s",
                        (storable_or_none(error), callback_id, self.node, epoch, epoch))
            return cur.rowcount == 1

    def callbacks_done(self, done: Sequence[tuple[int, str | None]]) -> list[bool | None]:
        """Each as callback_done, fenced one by one, in one statement."""
        if not done:
            return []
        with self._one() as cur:
            cur.execute(_CALLBACKS_DONE, self._done_arguments(done))
            return self._marked(done, cur.fetchall())

    def _done_arguments(self, done: Sequence[tuple[int, str | None]]) -> dict[str, Any]:
        return {"ids": [callback_id for callback_id, _error in done],
                "errors": [storable_or_none(error) for _id, error in done],
                "epochs": [self._callback_epochs.pop(callback_id, self.epoch) for callback_id, _error in done],
                "node": self.node}

    @staticmethod
    def _marked(done: Sequence[tuple[int, str | None]], rows: list[tuple[Any, ...]]) -> list[bool | None]:
        marked = {int(row[0]) for row in rows}
        return [callback_id in marked for callback_id, _error in done]

    def owed_callbacks(self, grace: float | None = None) -> list[tuple[int, int, int, str]]:
        """Callbacks owed by this master, and those owed by a master whose lease
        is gone (taken over now: each runs on one live master)."""
        grace = self.lease_ttl if grace is None else grace
        with self._one() as cur:
            cur.execute(
                "UPDATE callbacks c SET owner = %(node)s, owner_epoch = %(epoch)s FROM (SELECT c2.id FROM callbacks c2 "
                "LEFT JOIN masters m ON m.node = c2.owner WHERE c2.state = 'owed' AND (c2.owner IS NULL "
                "OR c2.owner = %(node)s OR m.node IS NULL OR m.state IN ('stopped', 'lost') "
                "OR m.lease_expires_at < now() - make_interval(secs => %(grace)s)) "
                "FOR UPDATE OF c2 SKIP LOCKED) t WHERE c.id = t.id RETURNING c.id, c.job_id, c.attempt, c.kind",
                {"node": self.node, "epoch": self.epoch, "grace": grace})
            return sorted((int(r[0]), int(r[1]), int(r[2]), r[3]) for r in cur.fetchall())

    def open_attempts(self) -> list[OpenAttempt]:
        """This master's (node's) attempts that have no outcome yet."""
        with self._one() as cur:
            cur.execute(
                "SELECT a.id, a.job_id, j.key, j.target, a.n, a.pid, a.start_time, a.generation, a.started_at, "
                "a.started_boot, a.final, a.reason FROM attempts a "
                "JOIN jobs j ON j.id = a.job_id WHERE a.outcome IS NULL AND a.master = %s ORDER BY a.id", (self.node,))
            return [OpenAttempt(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                                ending=noted_ending(r[11])) for r in cur.fetchall()]

    def hold_finals(self, finals: list[tuple[int, str]],
                    callbacks_done: Sequence[tuple[int, str | None]] = ()) -> list[bool | None]:
        """Keep running attempts' final messages [(attempt id, JSON)] before the
        master acknowledges them (see Journal.hold_finals). Each row on its
        own (autocommit): a final held is independent of the others, none is
        acknowledged before all are written. One final (the usual case) is
        one plain statement: executemany enters and leaves pipeline mode,
        which cost the master more than the statement itself; with the
        callbacks done meanwhile, still one statement (one commit)."""
        with self._one() as cur:
            rows = [(data, attempt_id) for attempt_id, data in finals]
            if len(rows) == 1 and callbacks_done:
                cur.execute(_HOLD_FINAL_WITH_DONE, {"final": rows[0][0], "attempt": rows[0][1],
                                                    **self._done_arguments(callbacks_done)})
                return self._marked(callbacks_done, cur.fetchall())
            if len(rows) == 1:
                cur.execute(_HOLD_FINAL, rows[0])
            else:
                cur.executemany(_HOLD_FINAL, rows)
        return self.callbacks_done(callbacks_done)  # (each fenced; after the finals, never before)

    def targets_in_use(self) -> list[tuple[str, int, int]]:
        with self._one() as cur:
            cur.execute("SELECT target, count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = "
                        "'running') FROM jobs WHERE state IN ('pending', 'running') GROUP BY target ORDER BY target")
            return [(r[0], int(r[1]), int(r[2])) for r in cur.fetchall()]

    def job_row(self, job_id: int) -> dict[str, Any] | None:
        with self._one() as cur:
            cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,))
            rows = _dicts(cur)
        return rows[0] if rows else None

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATES, 0)
        with self._one() as cur:
            cur.execute("SELECT state, count(*) FROM jobs GROUP BY state")
            for state, n in cur.fetchall():
                counts[state] = int(n)
        return counts

    def pending_count(self) -> int:
        """Jobs waiting to run, counted through the jobs_pending index."""
        with self._one() as cur:
            cur.execute("SELECT count(*) FROM jobs WHERE state = 'pending'")
            row = cur.fetchone()
            assert row is not None  # count(*) always answers
            return int(row[0])

    def batch_counts(self, run_started: float) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATES, 0)
        with self._one() as cur:
            cur.execute("SELECT state, count(*) FROM jobs WHERE state IN ('scheduled', 'pending', 'running') "
                        "OR updated_at >= %s GROUP BY state", (run_started,))
            for state, n in cur.fetchall():
                counts[state] = int(n)
        counts["pending"] += counts.pop("scheduled")  # a delayed job is work the batch still has
        return counts

    def record_event(self, kind: str, generation: int | None, pid: int | None, detail: str | None = None) -> None:
        with self._one() as cur:
            cur.execute("INSERT INTO events (node, at, kind, generation, pid, detail) VALUES (%s, %s, %s, %s, %s, %s)",
                        (self.node, time.time(), kind, generation, pid, storable_or_none(detail)))

    def count_events(self, kind: str) -> int:
        with self._one() as cur:
            cur.execute("SELECT count(*) FROM events WHERE kind = %s AND node = %s", (kind, self.node))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def set_meta(self, **values: Any) -> None:
        with self._one() as cur:  # every value in one statement
            cur.execute("INSERT INTO meta SELECT %s, name, value FROM unnest(%s::text[], %s::text[]) AS v(name, value) "
                        "ON CONFLICT (node, name) DO UPDATE SET value = excluded.value",
                        (self.node, list(values), [json.dumps(v) for v in values.values()]))

    def meta(self, name: str, default: Any = None, *, counter: bool = False) -> Any:
        with self._one() as cur:
            cur.execute("SELECT value FROM meta WHERE node = %s AND name = %s", (self.node, name))
            row = cur.fetchone()
        return json.loads(row[0]) if row else default

    # -- reads for status and the operator --------------------------------------------------

    def attempt_end(self, job_id: int, n: int) -> tuple[str | None, int | None]:
        with self._one() as cur:
            cur.execute("SELECT reason, max_rss_kb FROM attempts WHERE job_id = %s AND n = %s", (job_id, n))
            row = cur.fetchone()
        return (row[0], row[1]) if row else (None, None)

    def recent_failures(self, limit: int) -> list[dict[str, Any]]:
        with self._one() as cur:
            cur.execute(
                "SELECT j.key, j.target, j.outcome, a.reason, j.error, a.max_rss_kb, j.updated_at AS failed_at "
                "FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.n = j.attempts "
                "WHERE j.state = 'failed' ORDER BY j.updated_at DESC, j.id DESC LIMIT %s", (limit,))
            return _dicts(cur)

    def master_times(self) -> tuple[float | None, float | None]:
        with self._tx() as cur:
            cur.execute("SELECT id, at FROM events WHERE kind = 'master_start' AND node = %s ORDER BY id DESC "
                        "LIMIT 1", (self.node,))
            row = cur.fetchone()
            if row is None:
                return None, None
            cur.execute("SELECT max(at) FROM events WHERE kind = 'replaced' AND node = %s AND id > %s",
                        (self.node, row[0]))
            reload = cur.fetchone()
        return row[1], reload[0] if reload else None

    def status_rows(self, node: str | None = None, *, state: str | None = None, after: int = 0,
                    limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Jobs in id order (of the master `node` if given) with the node that
        runs or ran it last: those of `state` if given, from id `after` on
        (exclusive), at most `limit` (None: no limit)."""
        conditions = ["j.id > %(after)s"]
        if node:
            conditions.append("a.master = %(node)s")
        if state == "running":
            # From the open attempts' partial index: the running jobs, never a read of every job.
            source = "attempts a JOIN jobs j ON j.id = a.job_id AND j.current_attempt = a.id"
            conditions += ["a.outcome IS NULL", "j.state = 'running'"]
        else:
            source = "jobs j LEFT JOIN attempts a ON a.id = j.current_attempt"
            if state is not None:
                conditions.append("j.state = %(state)s")
        with self._one() as cur:
            cur.execute(
                "SELECT j.id, j.key, j.target, j.params, j.state, j.attempts, j.outcome, j.result, j.error, "
                f"a.pid, a.master, l.reason, l.max_rss_kb, l.progress FROM {source} "
                "LEFT JOIN attempts l ON l.job_id = j.id AND l.n = j.attempts "
                f"WHERE {' AND '.join(conditions)} ORDER BY j.id LIMIT %(limit)s",
                {"node": node, "state": state, "after": after, "limit": limit})
            rows = cur.fetchall()
        for (job_id, key, target, params, state, attempts, outcome, result, error, pid, master, reason,
             max_rss_kb, progress) in rows:
            yield {
                "id": job_id, "key": key, "target": target, "params": stored_json(params), "state": state,
                "attempt": attempts, "pid": pid if state == "running" else None, "node": master,
                "outcome": outcome, "result": stored_json(result) if result is not None else None, "error": error,
                "reason": reason, "max_rss_kb": max_rss_kb, "progress": progress,
            }

    def timeline_recent(self, limit: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
        """As the SQLite journal's: the `limit` jobs that last changed among
        those that ran or failed before any attempt, their attempts, and how
        many pending jobs wait for a first attempt."""
        with self._tx() as cur:
            cur.execute("SELECT id AS job_id, key, target, state, attempts, error, updated_at FROM jobs "
                        "WHERE attempts > 0 OR state = 'failed' ORDER BY updated_at DESC, id DESC LIMIT %s", (limit,))
            jobs = sorted(_dicts(cur), key=lambda job: int(job["job_id"]))
            cur.execute("SELECT a.job_id, j.key, a.n, a.pid, a.started_at, a.ended_at, a.outcome, a.reason, "
                        "a.error, a.master, a.state, a.late_outcome, a.progress FROM attempts a "
                        "JOIN jobs j ON j.id = a.job_id "
                        "WHERE a.job_id = ANY(%s) ORDER BY a.job_id, a.n", ([job["job_id"] for job in jobs],))
            attempts = _dicts(cur)
            cur.execute("SELECT count(*) FROM jobs WHERE state = 'pending' AND attempts = 0")
            row = cur.fetchone()
        return jobs, attempts, int(row[0]) if row is not None else 0

    def timeline_events(self) -> list[dict[str, Any]]:
        with self._one() as cur:
            cur.execute("SELECT at, kind, generation, pid, detail, node FROM events ORDER BY at")
            return _dicts(cur)

    def list_jobs(self, *, state: str | None, target: str | None, since: float | None,
                  limit: int, after: tuple[float, int] | None = None,
                  key_prefix: str | None = None, batch_id: int | None = None) -> tuple[list[dict[str, Any]], int]:
        if (target is not None and unstorable(target)) or (key_prefix is not None and unstorable(key_prefix)):
            return [], 0  # no job has it (check_target_form and check_key refuse it at submit)
        conditions: list[str] = []
        args: list[Any] = []
        for column, value in (("j.state = %s", state), ("j.target = %s", target), ("j.updated_at >= %s", since),
                              ("j.batch_id = %s", batch_id)):
            if value is not None:
                conditions.append(column)
                args.append(value)
        if key_prefix:  # starts_with: no wildcard to escape, whatever the database's collation
            conditions.append("starts_with(j.key, %s)")
            args.append(key_prefix)
        if after is not None:  # as the SQLite journal's: the jobs after the page that ended at `after`
            conditions.append("j.updated_at <= %s AND (j.updated_at < %s OR j.id < %s)")
            args.extend((after[0], after[0], after[1]))
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._tx() as cur:
            cur.execute(f"SELECT count(*) FROM jobs j {where}", args)
            row = cur.fetchone()
            total = int(row[0]) if row else 0
            cur.execute(
                "SELECT j.id, j.key, j.target, j.state, j.attempts, j.outcome, a.reason, a.master AS node, "
                f"j.created_at, j.updated_at FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.n = j.attempts "
                f"{where} ORDER BY j.updated_at DESC, j.id DESC LIMIT %s", [*args, limit])
            return _dicts(cur), total

    def job_by_key(self, key: str) -> dict[str, Any] | None:
        if unstorable(key):
            return None
        with self._one() as cur:
            cur.execute("SELECT * FROM jobs WHERE key = %s", (key,))
            rows = _dicts(cur)
        return rows[0] if rows else None

    def attempts_of(self, job_id: int) -> list[dict[str, Any]]:
        with self._one() as cur:
            cur.execute("SELECT n, generation, pid, started_at, ended_at, outcome, reason, error, max_rss_kb, "
                        "master, state, late_outcome, progress FROM attempts WHERE job_id = %s ORDER BY n",
                        (job_id,))
            return _dicts(cur)

    def retry(self, keys: list[str] | None, target: str | None = None, fresh: bool = False) -> list[str]:
        if target is not None and unstorable(target):
            return []  # no job has it (check_target_form refuses it at submit)
        with self._tx() as cur:
            if keys is None:
                extra, args = ("AND target = %s", [target]) if target is not None else ("", [])
                cur.execute(f"SELECT id, key FROM jobs WHERE state = 'failed' {extra} ORDER BY id FOR UPDATE",
                            args)
                rows = [(int(r[0]), r[1]) for r in cur.fetchall()]
            else:
                rows = []
                for key in dict.fromkeys(keys):
                    if unstorable(key):
                        raise RetryRefused(f"no job with key {key!r}")
                    cur.execute("SELECT id, key, state FROM jobs WHERE key = %s FOR UPDATE", (key,))
                    row = cur.fetchone()
                    if row is None:
                        raise RetryRefused(f"no job with key {key!r}")
                    if row[2] not in ENDED_BADLY:
                        raise RetryRefused(f"job {key!r} is {row[2]}: only failed or cancelled jobs can be retried")
                    rows.append((int(row[0]), row[1]))
            for job_id, key in rows:
                cur.execute(f"SELECT 1 FROM callbacks c JOIN jobs j ON j.id = c.job_id WHERE c.job_id = %s AND "
                            f"c.state = 'owed' AND NOT {WITHDRAWN_WITH_ITS_CANCEL}", (job_id,))
                if cur.fetchone():
                    raise RetryRefused(f"job {key!r} still has a callback owed (it runs when a master runs): "
                                       "retry it once that has run")
                cur.execute(batches.PG_REFUSE_REOPEN, (job_id,))
                if cur.fetchone():
                    raise batches.owed_refusal(key)
            for job_id, _key in rows:
                cur.execute("DELETE FROM callbacks WHERE job_id = %s", (job_id,))
                cur.execute(f"UPDATE jobs SET state = CASE WHEN due_at > {_NOW} THEN 'scheduled' ELSE 'pending' END, "
                            f"failures = 0, not_before = 0, updated_at = {_NOW} WHERE id = %s", (job_id,))
                if fresh:
                    cur.execute("UPDATE jobs SET checkpoint = NULL, checkpoint_at = NULL WHERE id = %s", (job_id,))
            if rows:
                cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        return [key for _id, key in rows]

    # -- long jobs (docs/long-jobs.md) -------------------------------------------

    def save_checkpoints(self, saves: list[tuple[int, int, int, str]]) -> None:
        """As the SQLite journal's: kept once committed (the acks follow)."""
        where = SAVE_CHECKPOINT_WHERE.format(n="%(n)s", seq="%(seq)s")
        statement = (f"UPDATE jobs SET checkpoint = %(cp)s, checkpoint_at = {_NOW}, checkpoint_attempt = %(n)s, "
                     f"checkpoint_seq = %(seq)s WHERE id = %(job)s AND {where}")
        rows = [{"job": job_id, "n": n, "seq": seq, "cp": text} for job_id, n, seq, text in saves]
        with self._one() as cur:  # one row (the usual case) is one plain statement, as hold_finals
            if len(rows) == 1:
                cur.execute(statement, rows[0])
            else:
                cur.executemany(statement, rows)

    def checkpoint_of(self, job_id: int) -> str | None:
        with self._one() as cur:
            cur.execute("SELECT checkpoint FROM jobs WHERE id = %s", (job_id,))
            row = cur.fetchone()
        return None if row is None else row[0]

    def save_progress(self, reported: list[tuple[int, str]]) -> None:
        with self._tx() as cur:  # one transaction for all: one commit per write, however many jobs report
            cur.executemany("UPDATE attempts SET progress = %s WHERE id = %s", [(text, a) for a, text in reported])

    # -- batches (batches.py) -------------------------------------------------------------

    def submit_to_batch(self, name: str, jobs: Iterable[tuple[Any, ...]]) -> list[tuple[int, bool]]:
        """As the SQLite journal's; the batch's row is locked for the
        transaction, so a close waits for the jobs being added."""
        batches.check_name(name)
        jobs = batches.members(jobs)
        for job in jobs:
            check_key(job.key)
        with self._tx() as cur:
            cur.execute(batches.PG_OPEN, (name,))
            cur.execute(batches.PG_LOCK, (name,))
            row = cur.fetchone()
            assert row is not None
            batch_id, state = int(row[0]), row[1]
            if state != "open":
                raise batches.closed_refusal(name, state)
            submitted, added = [], 0
            for target, params_json, key, run_at, priority in jobs:
                job_id, created = self._insert_job(cur, key, target, params_json, run_at=run_at, priority=priority)
                if created:
                    cur.execute("UPDATE jobs SET batch_id = %s WHERE id = %s", (batch_id, job_id))
                    added += 1
                else:
                    cur.execute("SELECT j.batch_id, b.name FROM jobs j LEFT JOIN batches b ON b.id = j.batch_id "
                                "WHERE j.id = %s", (job_id,))
                    member = cur.fetchone()
                    if member is None or member[0] != batch_id:
                        raise batches.not_member_refusal(key, job_id, name, member[1] if member else None)
                submitted.append((job_id, created))
            cur.execute("UPDATE batches SET jobs = jobs + %s, remaining = remaining + %s WHERE id = %s",
                        (added, added, batch_id))
            cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        return submitted

    def close_batch(self, name: str) -> str:
        """As the SQLite journal's. A batch complete at its close owes its
        callback to no master in particular: the first live master to read
        the NOTIFY takes it (owed_callbacks)."""
        with self._tx() as cur:
            cur.execute(batches.PG_LOCK, (name,))
            row = cur.fetchone()
            if row is None:
                raise batches.unknown_refusal(name)
            batch_id, state, remaining = int(row[0]), row[1], int(row[2])
            if state != "open":
                return str(state)
            if remaining:
                cur.execute(f"UPDATE batches SET state = 'closed', closed_at = {_NOW} WHERE id = %s", (batch_id,))
                return "closed"
            cur.execute(f"UPDATE batches SET state = 'complete', closed_at = {_NOW}, completed_at = {_NOW}, "
                        f"completions = 1 WHERE id = %s", (batch_id,))
            cur.execute(f"INSERT INTO callbacks (job_id, attempt, kind, state, created_at) "
                        f"SELECT id, attempts, %s, 'owed', {_NOW} FROM jobs WHERE batch_id = %s "
                        f"ORDER BY updated_at DESC, id DESC LIMIT 1 ON CONFLICT (job_id, kind) DO NOTHING",
                        (batches.KIND, batch_id))
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, CALLBACKS_OWED))
            return "complete"

    def batches(self, name: str | None = None, batch_id: int | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
        """As the SQLite journal's: batches newest first with their jobs counted by state."""
        with self._tx() as cur:
            cur.execute(f"SELECT {batches.SUMMARY_COLUMNS} FROM batches b WHERE (%(name)s::text IS NULL OR "
                        f"b.name = %(name)s) AND (%(id)s::bigint IS NULL OR b.id = %(id)s) ORDER BY b.id DESC "
                        f"LIMIT %(limit)s", {"name": name, "id": batch_id, "limit": limit})
            rows = cur.fetchall()
            cur.execute("SELECT batch_id, state, count(*) FROM jobs WHERE batch_id = ANY(%s) "
                        "GROUP BY batch_id, state ORDER BY state", ([row[0] for row in rows],))
            counts: dict[int, dict[str, int]] = {}
            for member_of, state, n in cur.fetchall():
                counts.setdefault(int(member_of), {})[state] = int(n)
        return [batches.summary(row, counts.get(int(row[0]), {})) for row in rows]

    def batch_jobs(self, batch_id: int) -> list[dict[str, Any]]:
        with self._one() as cur:
            cur.execute("SELECT j.id, j.key, j.target, j.state, j.attempts, j.outcome, a.reason, "
                        "j.created_at, j.updated_at FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id "
                        "AND a.n = j.attempts WHERE j.batch_id = %s ORDER BY j.id", (batch_id,))
            return _dicts(cur)

    def take_owed_batch_callbacks(self) -> list[tuple[int, int, int, str]]:
        """None here: the trigger that owes a batch callback NOTIFYs, and the
        master that owns it takes it up from there (owed_callbacks)."""
        return []

    def request_cancel(self, attempt_id: int) -> None:
        """As the SQLite journal's: a cancel under way, noted on the open attempt."""
        self.note_kill(attempt_id, KillReason.CANCELLED)

    def note_kill(self, attempt_id: int, reason: KillReason) -> None:
        """As the SQLite journal's: a kill under way, noted on the open attempt."""
        with self._one() as cur:
            cur.execute("UPDATE attempts SET reason = %s WHERE id = %s AND outcome IS NULL", (str(reason), attempt_id))

    def cancel_pending(self, key: str) -> str | None:
        """As the SQLite journal's: a pending job cancelled with its
        `on_failed` owed (no owner: the first live master to read the NOTIFY
        takes it up, see owed_callbacks)."""
        if unstorable(key):
            return None
        with self._tx() as cur:
            cur.execute("SELECT id, state FROM jobs WHERE key = %s FOR UPDATE", (key,))
            row = cur.fetchone()
            if row is None:
                return None
            job_id, state = row
            if state in WAITING:
                cur.execute(f"UPDATE jobs SET state = 'cancelled', outcome = 'cancelled', error = %s, "
                            f"updated_at = {_NOW} WHERE id = %s", (f"{CANCELLED_REASON} before it ran", job_id))
                cur.execute(f"INSERT INTO callbacks (job_id, attempt, kind, state, created_at) "
                            f"SELECT %(job)s, COALESCE(MAX(n), 0), 'on_failed', 'owed', {_NOW} FROM attempts "
                            f"WHERE job_id = %(job)s ON CONFLICT (job_id, kind) DO NOTHING", {"job": job_id})
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, CALLBACKS_OWED))
            return str(state)

    def cancel(self, key: str) -> CancelRequest | None:
        """`phoenix cancel KEY --store URL`, from any host: a pending job as
        cancel_pending; a running one's current attempt is marked for its
        master, which hears it at once (NOTIFY) or within CANCEL_POLL
        (cancels_requested), ends it (TERM, KILL after kill_grace) and
        records `cancelled`; if that master's lease lapses first, the
        recovery records `cancelled` (_RECOVER_ATTEMPTS). Each write holds one
        row's lock only (the job's, or the attempt's), so a cancel never
        deadlocks with an outcome or a recovery that locks both; a job that
        starts or ends between the two is looked at again."""
        if unstorable(key):
            return None
        for _race in range(3):
            state = self.cancel_pending(key)
            if state != "running":
                return None if state is None else CancelRequest(state)
            with self._one() as cur:
                cur.execute(_REQUEST_CANCEL, {"key": key, "channel": CHANNEL})
                marked = cur.fetchone()
            if marked is not None:
                return CancelRequest(state, str(marked[0]), bool(marked[1]))
        return CancelRequest("running")  # it kept starting and ending: no attempt of it stayed to be marked

    def cancels_requested(self) -> set[int]:
        """This master's open attempts (of its current epoch) whose cancel was
        requested: one look through the attempts_open index."""
        with self._one() as cur:
            cur.execute("SELECT id FROM attempts WHERE master = %s AND epoch = %s AND outcome IS NULL "
                        "AND reason = 'cancelled'", (self.node, self.epoch))
            return {int(row[0]) for row in cur.fetchall()}

    def prune(self, *, finished_before: float, failed_before: float | None, batch: int = 500) -> dict[str, int]:
        """As the SQLite journal's: old ended jobs with their attempts and
        callbacks, `batch` jobs per transaction; never a job with a callback owed,
        nor a member of a batch that is not complete."""
        removed = {"jobs": 0, "attempts": 0, "callbacks": 0, "events": 0}
        ended = "(state = 'finished' AND updated_at < %(finished)s)"
        if failed_before is not None:
            ended += " OR (state IN ('failed', 'cancelled') AND updated_at < %(failed)s)"
        bounds: dict[str, Any] = {"finished": finished_before, "failed": failed_before, "batch": batch, "after": 0}
        while True:
            with self._tx() as cur:
                cur.execute(f"SELECT id FROM jobs WHERE ({ended}) AND NOT EXISTS (SELECT 1 FROM callbacks c WHERE "
                            f"c.job_id = jobs.id AND c.state = 'owed') AND {batches.PRUNABLE} AND {NOT_NEWEST} "
                            f"AND id > %(after)s ORDER BY id LIMIT %(batch)s "
                            f"FOR UPDATE SKIP LOCKED", bounds)
                ids = [int(r[0]) for r in cur.fetchall()]
                bounds["after"] = ids[-1] if ids else 0
                for table, column in (("attempts", "job_id"), ("callbacks", "job_id"), ("jobs", "id")):
                    cur.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s)", (ids,))
                    removed[table] += cur.rowcount
            if len(ids) < batch:
                break
        with self._one() as cur:
            # Never a node's last master start nor what followed it (master_times reads them).
            cur.execute("WITH last_start AS MATERIALIZED (SELECT node, max(id) AS id FROM events "
                        "WHERE kind = 'master_start' GROUP BY node) DELETE FROM events e WHERE e.at < %s AND e.id < "
                        "COALESCE((SELECT l.id FROM last_start l WHERE l.node = e.node), 9223372036854775807)",
                        (finished_before,))
            removed["events"] = cur.rowcount
        return removed


class _OneStatement:
    """PgStore._one: the kept cursor; a lost connection becomes StoreUnavailable
    (an outage), as in PgStore._tx, and the next call connects again."""

    def __init__(self, store: PgStore) -> None:
        self.store = store

    def __enter__(self) -> psycopg.Cursor[Any]:
        try:
            return self.store._cursor()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.store._drop()
            raise StoreUnavailable(f"PostgreSQL store: {one_line(exc)}") from None

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            self.store._drop()
            raise StoreUnavailable(f"PostgreSQL store: {one_line(exc)}") from None


# -- connections, the schema, and messages --------------------------------------------------


def network_timeout(lease_ttl: float) -> float:
    """How long one wait on the network may block the master's loop: a
    quarter of the lease, so that a master cut off silently (no RST, no FIN:
    its statement's packets just vanish) is back in its loop in time to end
    its children when its lease lapses (leases.children_must_end)."""
    return max(0.5, min(lease_ttl / 4, float(CONNECT_TIMEOUT)))


def connect(url: str, *, autocommit: bool = True, network_timeout: float = CONNECT_TIMEOUT,
            ) -> psycopg.Connection[Any]:
    """A connection whose waits on a lost server are bounded: libpq keepalives
    notice a dead peer, tcp_user_timeout ends a wait for unacknowledged data
    (a statement sent into a silent partition: keepalives do not cover it,
    and the kernel would retry for about 15 minutes), statement_timeout ends
    a stuck statement, and idle_in_transaction_session_timeout frees locks of
    a master that hangs inside a transaction."""
    try:
        conn = psycopg.connect(
            url, autocommit=autocommit, connect_timeout=max(2, math.ceil(network_timeout)),
            application_name="phoenix", tcp_user_timeout=int(network_timeout * 1000),
            keepalives=1, keepalives_idle=max(1, int(network_timeout)), keepalives_interval=1, keepalives_count=2,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
                    f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}")
    except psycopg.ProgrammingError as exc:  # a malformed URL, which libpq quotes whole: never its password
        raise JournalError(f"the store URL is not valid: {one_line(exc, url)}") from None
    except psycopg.OperationalError as exc:
        if "unsupported startup parameter" in str(exc):  # pgbouncer refuses `options`
            raise JournalError(f"the PostgreSQL store refused Phoenix's session settings "
                               f"({one_line(exc, url)}): {POOLER_HINT}") from None
        raise StoreUnavailable(f"cannot connect to the PostgreSQL store: {one_line(exc, url)}") from None
    try:
        check_session(conn)
    except BaseException:
        conn.close()
        raise
    return conn


POOLER_HINT = ("a connection pooler in transaction or statement mode (pgbouncer pool_mode = transaction) drops "
               "session settings and LISTEN; point Phoenix at PostgreSQL itself, or at a pool in session mode")


def check_session(conn: psycopg.Connection[Any]) -> None:
    """The session keeps the timeouts Phoenix connected with. A pooler in
    transaction mode told to ignore `options` (ignore_startup_parameters)
    connects, then runs each statement on some server session without them:
    a stuck statement or transaction of a lost master would hold its locks."""
    try:
        row = conn.execute(
            "SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout'), "
            "current_setting('statement_timeout')::interval = make_interval(secs => %s) "
            "AND current_setting('idle_in_transaction_session_timeout')::interval = make_interval(secs => %s)",
            (STATEMENT_TIMEOUT_MS / 1000, IDLE_IN_TRANSACTION_MS / 1000)).fetchone()
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise StoreUnavailable(f"cannot connect to the PostgreSQL store: {one_line(exc)}") from None
    if row is None or not row[2]:
        found = f"statement_timeout {row[0]}, idle_in_transaction_session_timeout {row[1]}" if row else "none"
        raise JournalError(f"the PostgreSQL store's session does not keep the settings Phoenix connects with "
                           f"(found {found}; Phoenix sets {STATEMENT_TIMEOUT_MS // 1000}s and "
                           f"{IDLE_IN_TRANSACTION_MS // 1000}s): {POOLER_HINT}")


def check_durability(conn: psycopg.Connection[Any], *, first: bool) -> None:
    """Phoenix acknowledges a submit, a child's final and a callback done once
    its commit returns, so the commit must be on the server's disk by then:
    synchronous_commit `local`, `remote_write`, `on` (the default) or
    `remote_apply`. `off` acknowledges before the WAL is flushed, and a server
    crash loses the last commits: refused, as a setting that silently breaks
    what Phoenix promises (a warning would scroll by while jobs vanish). At
    the first connection (start, a command) it is one line and exit 2; on a
    reconnect (the role's setting changed under a running master) it is an
    outage: no claims, writes kept and replayed, until it is fixed."""
    row = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
    setting = str(row[0]) if row else "off"
    if setting != "off":
        # Pinned for this session: a server-wide change (ALTER SYSTEM, a reload) would
        # otherwise turn it off under a running master, which would acknowledge on.
        conn.execute("SELECT set_config('synchronous_commit', %s, false)", (setting,))
        if not conn.autocommit:
            conn.commit()
        return
    message = ("the PostgreSQL store's session has synchronous_commit = off: commits Phoenix acknowledges "
               "could be lost in a server crash. Set it to on for Phoenix's role (ALTER ROLE <role> SET "
               "synchronous_commit = on) or database (ALTER DATABASE <db> SET synchronous_commit = on)")
    if first:
        raise WeakDurability(message)
    raise StoreUnavailable(message)


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    row = conn.execute("SELECT to_regclass('phoenix_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute("SELECT max(version) FROM phoenix_schema").fetchone()
    return int(found[0]) if found and found[0] is not None else None


def check_version(conn: psycopg.Connection[Any], url: str) -> None:
    """Refuse a database without Phoenix's schema, or with another version of it."""
    version = schema_version(conn)
    if version is None:
        raise SchemaMismatch(f"the PostgreSQL store has no Phoenix schema yet: create it with `{MIGRATE_HINT}`")
    if version > SCHEMA_VERSION:
        raise SchemaMismatch(f"the PostgreSQL store has schema version {version}, newer than this Phoenix reads "
                             f"({SCHEMA_VERSION}): upgrade Phoenix on this host")
    if version < SCHEMA_VERSION:
        raise SchemaMismatch(f"the PostgreSQL store has schema version {version}, older than this Phoenix's "
                             f"({SCHEMA_VERSION}): upgrade it with `{MIGRATE_HINT}`")


# Each version's upgrade to the next, in one transaction with the version's change.
_UPGRADES = {
    1: """
ALTER TABLE masters ADD COLUMN IF NOT EXISTS instance text, ADD COLUMN IF NOT EXISTS outage_budget double precision;
ALTER TABLE callbacks ADD COLUMN IF NOT EXISTS owner_epoch bigint;
ALTER TABLE jobs RESET (fillfactor)
""",
    2: f"""
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS due_at double precision NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS run_at double precision, ADD COLUMN IF NOT EXISTS tick double precision;
UPDATE jobs SET due_at = created_at WHERE due_at = 0;
{_V3_INDEXES};
{_V3_POOLS}
""",
    3: """
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS checkpoint text, ADD COLUMN IF NOT EXISTS checkpoint_at double precision,
    ADD COLUMN IF NOT EXISTS checkpoint_attempt integer, ADD COLUMN IF NOT EXISTS checkpoint_seq integer;
ALTER TABLE attempts ADD COLUMN IF NOT EXISTS progress text
""",
    4: batches.PG_SCHEMA,  # 4 -> 5: batches, counted by a trigger on jobs
}


def _fence_lapsed_masters(conn: psycopg.Connection[Any]) -> None:
    """In migrate's transaction. A master whose lease lapsed without a stop
    may only be frozen (a VM pause): woken, it would renew and go on under the
    new schema (an outside check: it ran a batch's callback as on_failed).
    Its epoch moves on, and its open attempts end `lost` here, as a recovery
    ends them (no master of the old release may do it now, and one of the new
    cannot start until the schema is new): woken, it finds itself fenced and
    ends its children, whose jobs are pending again. Without the app's retry
    policy, none counts as a failure; a cancelled one stays cancelled, its
    on_failed owed to whichever master takes it."""
    nodes = [node for (node,) in conn.execute(
        "UPDATE masters SET epoch = epoch + 1 WHERE state IN ('running', 'draining', 'degraded') "
        "AND lease_expires_at <= now() RETURNING node").fetchall()]
    if not nodes:
        return
    lost = conn.execute(_RECOVER_ATTEMPTS, {"nodes": nodes, "reason": RECOVERED_REASON, "cancelled": CANCELLED_REASON,
                                            "cancelled_error": RECOVERED_CANCEL}).fetchall()
    conn.execute(_FREE_SLOTS, ([int(row[0]) for row in lost],))
    for attempt_id, job_id, number, cancelled in lost:
        conn.execute(f"UPDATE jobs SET state = %s, outcome = %s, error = %s, not_before = 0, updated_at = {_NOW} "
                     f"WHERE id = %s AND current_attempt = %s",
                     ("cancelled" if cancelled else "pending", "cancelled" if cancelled else "lost",
                      RECOVERED_CANCEL if cancelled else RECOVERED_REASON, job_id, attempt_id))
        if cancelled:
            conn.execute(f"INSERT INTO callbacks (job_id, attempt, kind, state, created_at) VALUES "
                         f"(%s, %s, 'on_failed', 'owed', {_NOW}) ON CONFLICT (job_id, kind) DO NOTHING",
                         (job_id, number))
    if lost:
        conn.execute("SELECT pg_notify(%s, 'recovered')", (CHANNEL,))


def migrate(url: str) -> tuple[int | None, int]:
    """Create or upgrade the schema; (version before, version now). Refuses a
    newer one, and a version no Phoenix wrote."""
    conn = connect(url)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('phoenix_schema'))")  # one migrator at a time
            before = schema_version(conn)
            if before is not None and before > SCHEMA_VERSION:
                raise SchemaMismatch(f"the PostgreSQL store has schema version {before}, newer than this Phoenix "
                                     f"knows ({SCHEMA_VERSION}): upgrade Phoenix")
            if before is None:
                conn.execute(_SCHEMA)  # several statements, no parameters: one simple query
                conn.execute("INSERT INTO phoenix_schema VALUES (%s)", (SCHEMA_VERSION,))
            elif before < SCHEMA_VERSION:
                # A master live on the store now is of an older release (one of this
                # release refuses the older schema at start): upgraded under it, it
                # would go on with a schema it does not know (an outside check: old
                # masters took batch callbacks and ran them as on_failed).
                live = [node for (node,) in conn.execute(
                    "SELECT node FROM masters WHERE state IN ('running', 'draining', 'degraded') "
                    "AND lease_expires_at > now() ORDER BY node FOR UPDATE").fetchall()]
                if live:
                    shown = ", ".join(repr(node) for node in live[:5]) + (" ..." if len(live) > 5 else "")
                    raise SchemaMismatch(
                        f"{len(live)} master(s) of an older Phoenix run on this store ({shown}), on schema version "
                        f"{before}: stop them (`phoenix stop` on each host), run this again, then start them with "
                        f"this release; nothing was changed")
                if any(version not in _UPGRADES for version in range(before, SCHEMA_VERSION)):
                    raise SchemaMismatch(
                        f"the PostgreSQL store says schema version {before}, which no Phoenix wrote (the first is 1): "
                        f"phoenix_schema was changed by other means; nothing was changed. Set it back to the "
                        f"version the tables really have, or create the schema in an empty database")
                _fence_lapsed_masters(conn)
                for version in range(before, SCHEMA_VERSION):
                    conn.execute(_UPGRADES[version])
                conn.execute("UPDATE phoenix_schema SET version = %s", (SCHEMA_VERSION,))
        return before, SCHEMA_VERSION
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise StoreUnavailable(f"PostgreSQL store: {one_line(exc)}") from None
    finally:
        conn.close()


def one_line(exc: BaseException, url: str | None = None) -> str:
    """A driver's error in one line; given the `url` it was handed, without its password (scrubbed before
    the line is cut, so that no cut hides a password from it)."""
    text = str(exc) if url is None else scrub(str(exc), url)
    return " ".join(text.split())[:300] or type(exc).__name__


def _dicts(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
