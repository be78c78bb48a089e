"""The store's seam: what the backends share, and nothing of any one of them.

`Store` is the interface every part of the master, the commands and the
client use; `store.sqlite.Journal` (SQLite in the state directory, the
embedded default), `store.postgres.PgStore` (one PostgreSQL database shared by
many masters) and `store.memory.MemoryStore` (in memory, for tests) implement
it, and the contract tests (tests/store/) run the same cases against each.
This module also owns the rows they return (`Job`, `OpenAttempt`), the one
list of job states (`JobState`), their errors, and the rules both SQL backends
apply the same way (keys, what a retry takes back). It imports no backend:
`phoenix.store.open.open_store` picks one by the `store` setting.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol, Self, Sequence, runtime_checkable
from urllib.parse import unquote

from phoenix.errors import Conflict, StateError, Unavailable
from phoenix.linux.untrusted import storable, stored_json
from phoenix.rules.states import KillReason

SQLITE = "sqlite"
URL_SCHEMES = ("postgresql://", "postgres://")


# `phoenix prune` keeps the newest job, whatever its age: SQLite gives a new
# row the highest id there is plus one, so deleting the newest would hand its
# id to the next job, and an outbox file or a log line of the old job would
# then name the new one. Kept, the ids only grow. (One rule on every store.)
NOT_NEWEST = "jobs.id < (SELECT max(id) FROM jobs)"

# What an open does with a SQLite journal of an older schema: "always" upgrade
# it (the master), upgrade it only if no master runs on it ("alone": commands
# and clients), or "never" (the preflight, which only reads the jobs' targets).
Upgrade = Literal["always", "alone", "never"]


class JobState(StrEnum):
    """Every state a job's row can be in: the stores' `state` column, the
    metrics' `state` label, `phoenix jobs --state`, the status counts."""

    SCHEDULED = "scheduled"  # a delayed job before its due time (docs/scheduling.md)
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_STATES: tuple[str, ...] = tuple(state.value for state in JobState)
# What `phoenix retry KEY` takes back to pending. `phoenix retry --failed`:
# failed jobs only. A cancel is the operator's decision about one job: only
# naming it (retry KEY) undoes it.
ENDED_BADLY: tuple[str, ...] = (JobState.FAILED.value, JobState.CANCELLED.value)
# Not started yet: what `phoenix cancel` takes without a child to end.
WAITING: tuple[str, ...] = (JobState.SCHEDULED.value, JobState.PENDING.value)
# Undone before any master started the on_failed it owes, the cancel takes
# that call with it (nobody was told of a cancel that no longer holds); any
# other owed callback refuses the retry until it has run. (SQL over jobs `j`
# and callbacks `c`, the same in both SQL backends.)
WITHDRAWN_WITH_ITS_CANCEL = "(j.state = 'cancelled' AND c.kind = 'on_failed' AND c.runs = 0)"
# The targets whose global resource pool has no free slot (tables pools and
# pool_targets, schema version 3): their jobs are not started now, the others are.
FULL_POOL_TARGETS = ("SELECT pt.target FROM pool_targets pt JOIN pools p ON p.name = pt.pool "
                     "WHERE p.used >= p.capacity")


# -- errors (phoenix/errors.py draws the tree) -------------------------------------------------


class JournalError(StateError, RuntimeError):
    """The store cannot be opened or written; the message says which file or server and why."""


class StoreUnavailable(Unavailable, OSError):
    """A shared store (PostgreSQL) cannot be reached: an outage, as an
    unwritable journal is (no claims; children keep running; writes replayed)."""


class SchemaMismatch(JournalError):
    """A shared store holds no Phoenix schema, or one of another version."""


class WeakDurability(JournalError):
    """The PostgreSQL session would acknowledge commits before they are on disk."""


class NodeTaken(JournalError):
    """Another master (another state directory) holds this node name's live lease."""


class RetryRefused(Conflict, ValueError):
    """`phoenix retry` named a job that is not failed or cancelled, or none at all."""


class KeyConflict(Conflict, ValueError):
    """A job was submitted under a key that already names a job with another
    target or other parameters; the message shows what differs."""


# -- rows ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Job:
    id: int
    key: str
    target: str
    params: str
    attempts: int
    failures: int
    # Where it resumes: its last checkpoint (JSON), read with the job by `claim`
    # and `pending` (on a shared store a read of its own was a round trip per job).
    checkpoint: str | None = None
    # SQLite only (a typed store cannot hold it): a number of its row that another
    # tool replaced with bytes or text ("attempts column of its row holds a blob value"); the job fails before
    # any attempt, as it does for a damaged text (specs.startable).
    damaged: str | None = None


@dataclass(slots=True)
class OpenAttempt:
    attempt_id: int
    job_id: int
    key: str
    target: str
    n: int
    pid: int | None
    start_time: int | None
    generation: int
    started_at: float  # wall clock
    started_boot: float | None  # CLOCK_BOOTTIME; None in a journal written before it was recorded
    final: str | None  # the final message the master acknowledged (JSON), if one came
    # A kill (a hang, max_runtime: noted with note_kill) or `phoenix cancel` was
    # under way when its master stopped watching (a replacement, a crash): the
    # next one ends it for that reason too, never as a job's own error or as lost.
    ending: KillReason | None = None

    @property
    def cancel_requested(self) -> bool:
        return self.ending == KillReason.CANCELLED


def noted_ending(reason: str | None) -> KillReason | None:
    """What an open attempt's `reason` says was under way: a cancel
    (request_cancel) or a kill (note_kill); None for anything else."""
    return KillReason(reason) if reason in _NOTED_ENDINGS else None


# The reasons an open attempt's row is given while its end is under way. (A
# memory kill is a SIGKILL at once: nothing for a next master to finish.)
_NOTED_ENDINGS = frozenset({KillReason.CANCELLED, KillReason.HEARTBEAT_TIMEOUT, KillReason.CONNECTION_CLOSED,
                            KillReason.STALL_TIMEOUT, KillReason.MAX_RUNTIME, KillReason.OPERATOR})


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """What a shared store's `cancel` did to a job: its state `before`; for a
    running job, the `node` whose master runs it and whether that master's
    lease is `live` (if not, the recovery of that lease records the cancel)."""

    before: str
    node: str | None = None
    live: bool = False


# -- keys: the same rules in every backend ---------------------------------------------------------


def canonical_params(params_json: str) -> str:
    return json.dumps(stored_json(params_json), sort_keys=True, separators=(",", ":"))


def default_key(target: str, params_json: str, run_at: float | None = None, priority: int = 0) -> str:
    """Idempotency key for a job submitted without one: same target and same
    parameters (canonical JSON) make the same job; a due time or a priority
    asked for is part of it (the same job for later is another job, not a
    key conflict). Without them, the key of every release before them."""
    import hashlib  # here: loading OpenSSL costs every new master image ~6 ms, and only submissions need it

    timing = "" if run_at is None and not priority else f"\0{run_at!r}\0{priority}"
    return hashlib.sha256(f"{target}\0{canonical_params(params_json)}{timing}".encode()).hexdigest()[:32]


def _shown_time(run_at: float | None) -> str:
    if run_at is None:
        return "due-at-once"
    try:
        return datetime.fromtimestamp(run_at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):  # a recorded time out of any date's range: shown as it is
        return repr(run_at)


def timing_differences(recorded: tuple[float | None, int], submitted: tuple[float | None, int]
                       ) -> list[tuple[str, str, str]]:
    """(what differs, recorded, submitted) of the due time asked for and the
    priority, (run_at, priority) each: another one under a job's key is a key
    conflict, as other parameters are."""
    (old_run_at, old_priority), (run_at, priority) = recorded, submitted
    differences = []
    if old_run_at != run_at:
        differences.append(("another due time", _shown_time(old_run_at), _shown_time(run_at)))
    if old_priority != priority:
        differences.append(("another priority", f"priority={old_priority}", f"priority={priority}"))
    return differences


def key_conflict(key: str, job_id: int, recorded: tuple[str, str], submitted: tuple[str, str],
                 also: Iterable[tuple[str, str, str]] = ()) -> KeyConflict | None:
    """The error for a submission under a key that names job `job_id` already,
    with what differs, or None if it is the same job ((target, parameters)
    each; parameters compared as canonical JSON; `also`: more differences,
    as timing_differences finds them)."""
    (old_target, old_params), (target, params_json) = recorded, submitted
    differences = []  # (what differs, recorded, submitted)
    if old_target != target:
        differences.append(("another target", old_target, target))
    if old_params != params_json and canonical_params(old_params) != canonical_params(params_json):
        differences.append(("other parameters", _brief(old_params), _brief(params_json)))
    differences.extend(also)
    if not differences:
        return None
    what = " and ".join(d[0] for d in differences)
    was = " ".join(d[1] for d in differences)
    now = " ".join(d[2] for d in differences)
    return KeyConflict(
        f"key {key!r} already names job {job_id} with {what}: recorded {was}, submitted {now}. "
        "Submit it under another key; the same target and parameters again are a no-op"
    )


# A checkpoint (of attempt n, message seq) is kept if its attempt is the job's
# latest and it is newer than the one kept: a late one (an outbox file read
# after a newer one was acknowledged, a fenced attempt's) never replaces it.
# The SQL stores' condition, and the same rule in Python (MemoryStore).
SAVE_CHECKPOINT_WHERE = ("attempts = {n} AND (checkpoint_attempt IS NULL OR checkpoint_attempt < {n} "
                         "OR (checkpoint_attempt = {n} AND checkpoint_seq < {seq}))")


def checkpoint_replaces(job: dict[str, Any], n: int, seq: int) -> bool:
    kept = job.get("checkpoint_attempt")
    return job["attempts"] == n and (kept is None or kept < n or (kept == n and job["checkpoint_seq"] < seq))


def _brief(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the interface ---------------------------------------------------------------------------------


class Store(Protocol):
    """What the master, the commands and the client use of a store. A shared
    store (`shared` True) is written by many masters at once and is a
    `SharedStore`: the master then runs a lease (leasekeeper.py) and claims
    with `claim` instead of `pending` + `begin_attempt`. A store that is not
    shared keeps its jobs in the state directory (or in memory)."""

    shared: bool

    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None: ...

    # submission (any process)
    def submit(self, target: str, params_json: str, key: str | None = None, *, run_at: float | None = None,
               priority: int = 0, tick: float | None = None) -> tuple[int, bool]: ...
    def submit_many(self, jobs: Iterable[tuple[str, str, str]]) -> list[tuple[int, bool]]: ...

    # the master's writes
    def pending(self, limit: int) -> list[Job]: ...
    def claim(self, generation: int, pid: int | None, start_time: int | None) -> tuple[Job, int] | None: ...
    def next_due_in(self) -> float | None: ...
    def promote_due(self) -> int: ...  # scheduled jobs whose time has come: pending
    def set_pools(self, capacities: dict[str, int],
                  targets: dict[str, str | None]) -> list[tuple[str, int | None, int]]: ...
    def pools_status(self) -> list[dict[str, Any]]: ...
    def next_scheduled_at(self) -> float | None: ...  # the earliest scheduled job's due time (wall clock)
    def last_tick(self, target: str, before: float | None = None) -> tuple[float, str] | None: ...
    def begin_attempt(self, job: Job, generation: int, pid: int | None, start_time: int | None) -> int: ...
    def end_attempt(self, attempt_id: int, job_id: int, *, outcome: str, reason: str | None, error: str | None,
                    result_json: str | None, max_rss_kb: int | None, job_state: str, counts_as_failure: bool,
                    retry_delay: float | None = None, callback: str | None, attempt_n: int,
                    durable: bool = False, start_callback: bool = False) -> tuple[bool, int | None]: ...
    # `start_callback`: the caller starts the callback owed at once (start_callback): a shared store
    # counts its run in the outcome's own statement, under the same fence, and sends none for the start.
    # `callbacks_done`: marked done in the same commit, each as callback_done says (group commit).
    def hold_finals(self, finals: list[tuple[int, str]],
                    callbacks_done: Sequence[tuple[int, str | None]] = ()) -> list[bool | None]: ...
    def fail_without_attempt(self, job_id: int, error: str) -> int | None: ...
    # False: fenced (a shared store's callback another master owns now); None: no fencing (one master)
    def callback_started(self, callback_id: int) -> bool | None: ...
    # A callback about to run: its run counted as callback_started does, and what it is handed read
    # (job_row, and attempt_end of its attempt `n`): one round trip on a shared store. None: fenced.
    def start_callback(self, callback_id: int, job_id: int,
                       n: int) -> tuple[dict[str, Any], str | None, int | None] | None: ...
    def callback_done(self, callback_id: int, error: str | None) -> bool | None: ...
    # Many callbacks done [(id, error)], durable in one commit; each as callback_done says.
    def callbacks_done(self, done: Sequence[tuple[int, str | None]]) -> list[bool | None]: ...
    def owed_callbacks(self) -> list[tuple[int, int, int, str]]: ...
    def open_attempts(self) -> list[OpenAttempt]: ...
    def targets_in_use(self) -> list[tuple[str, int, int]]: ...
    def job_row(self, job_id: int) -> dict[str, Any] | None: ...
    def counts(self) -> dict[str, int]: ...
    def pending_count(self) -> int: ...
    def batch_counts(self, run_started: float) -> dict[str, int]: ...
    def record_event(self, kind: str, generation: int | None, pid: int | None, detail: str | None = None) -> None: ...
    def count_events(self, kind: str) -> int: ...
    def set_meta(self, **values: Any) -> None: ...
    def meta(self, name: str, default: Any = None, *, counter: bool = False) -> Any: ...
    def probe_write(self) -> None: ...

    # reads for status, report and the operator's commands
    def attempt_end(self, job_id: int, n: int) -> tuple[str | None, int | None]: ...
    def recent_failures(self, limit: int) -> list[dict[str, Any]]: ...
    def master_times(self) -> tuple[float | None, float | None]: ...
    def status_rows(self, *, state: str | None = None, after: int = 0,
                    limit: int | None = None) -> Iterator[dict[str, Any]]: ...
    def timeline_recent(self, limit: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]: ...
    def timeline_events(self) -> list[dict[str, Any]]: ...
    def list_jobs(self, *, state: str | None, target: str | None, since: float | None,
                  limit: int, after: tuple[float, int] | None = None,
                  key_prefix: str | None = None, batch_id: int | None = None) -> tuple[list[dict[str, Any]], int]: ...
    def job_by_key(self, key: str) -> dict[str, Any] | None: ...
    def attempts_of(self, job_id: int) -> list[dict[str, Any]]: ...
    def retry(self, keys: list[str] | None, target: str | None = None, fresh: bool = False) -> list[str]: ...
    def cancel_pending(self, key: str) -> str | None: ...
    def request_cancel(self, attempt_id: int) -> None: ...
    def note_kill(self, attempt_id: int, reason: KillReason) -> None: ...
    # long jobs: checkpoints (durable: acknowledged to the child) and progress (shown only)
    def save_checkpoints(self, saves: list[tuple[int, int, int, str]]) -> None: ...
    def checkpoint_of(self, job_id: int) -> str | None: ...
    def save_progress(self, reported: list[tuple[int, str]]) -> None: ...
    def prune(self, *, finished_before: float, failed_before: float | None, batch: int = 500) -> dict[str, int]: ...

    # batches (store/batches.py)
    # jobs: batches.Member tuples (target, params JSON, key[, run_at, priority])
    def submit_to_batch(self, name: str, jobs: Iterable[tuple[Any, ...]]) -> list[tuple[int, bool]]: ...
    def close_batch(self, name: str) -> str: ...
    def batches(self, name: str | None = None, batch_id: int | None = None,
                limit: int | None = None) -> list[dict[str, Any]]: ...
    def batch_jobs(self, batch_id: int) -> list[dict[str, Any]]: ...
    def take_owed_batch_callbacks(self) -> list[tuple[int, int, int, str]]: ...


@runtime_checkable
class SharedStore(Store, Protocol):
    """A store many masters write at once (`shared` True): each master holds a
    lease on it, renewed on the store's clock; any master recovers the
    masters whose lease lapsed; a LISTEN connection wakes them."""

    node: str  # this master's name in the store
    epoch: int  # this master's lease epoch: bumped when another master recovers it
    last_recovery: tuple[list[str], int]  # (masters, attempts) the last recover() took
    recovery_due: bool  # the last renewal saw a master due for recovery

    def register_master(self, pid: int, generation: int, started_at: float, slots: int, app: str | None,
                        *, instance: str | None = None, grace: float = 0.0,
                        outage_budget: float | None = None) -> int: ...
    def renew_lease(self, state: str, slots: int, slots_used: int, grace: float | None = None) -> bool: ...
    def release_lease(self, state: str) -> None: ...
    def recover(self, grace: float, decide: Callable[[str, int], tuple[str, bool, float | None, str | None]],
                ) -> list[tuple[int, int, int, str]]: ...
    def masters(self) -> list[dict[str, Any]]: ...
    # As Store's, each row with the `node` that runs (or last ran) the job; `node` given: that master's jobs only.
    def status_rows(self, node: str | None = None, *, state: str | None = None, after: int = 0,
                    limit: int | None = None) -> Iterator[dict[str, Any]]: ...
    def open_listener(self) -> int: ...
    def read_notifies(self) -> list[str]: ...
    def close_listener(self) -> None: ...
    # `phoenix cancel KEY --store URL` from any host; what this master is asked to cancel (attempt ids)
    def cancel(self, key: str) -> CancelRequest | None: ...
    def cancels_requested(self) -> set[int]: ...


@runtime_checkable
class FileStore(Store, Protocol):
    """A store in one file of the state directory (the SQLite journal): the
    master puts the file back if it is removed under it."""

    path: Path

    def restore_file(self) -> None: ...


def is_url(store: str) -> bool:
    return store.startswith(URL_SCHEMES)


def check_setting(store: str) -> None:
    """`sqlite` or a PostgreSQL URL; anything else is refused by name."""
    if store != SQLITE and not is_url(store):
        raise JournalError(f"store must be \"sqlite\" or a postgresql:// URL (got {_redact(store)!r})")


def default_node(state_dir: str | Path) -> str:
    """A master's name in a shared store: this host, and the state directory
    (two masters on one host have two state directories)."""
    # storable: a directory's name may be bytes that are not UTF-8, which a text column refuses.
    return storable(f"{socket.gethostname()}:{Path(state_dir).resolve()}")


_PASSWORD_PARAMETER = re.compile(r"(?i)password=([^&#\s]*)")


def _redact(url: str) -> str:
    """A URL without its password (in its user part, or a password=
    parameter), for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        rest = f"{credentials.partition(':')[0]}:***@{host}"
    return f"{scheme}://{_PASSWORD_PARAMETER.sub(r'password=***', rest)}"


def _secrets(url: str) -> set[str]:
    """The passwords a URL holds, as written and percent-decoded."""
    found = {match.group(1) for match in _PASSWORD_PARAMETER.finditer(url)}
    credentials, at, _host = url.partition("://")[2].rpartition("@")
    if at and ":" in credentials:
        found.add(credentials.partition(":")[2])
    return {text for secret in found for text in (secret, unquote(secret)) if text}


def scrub(text: str, url: str) -> str:
    """`text` (a driver's error, which may quote the URL it was given) with
    the URL redacted and none of its passwords left anywhere in it."""
    text = text.replace(url, _redact(url))
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


redact = _redact
