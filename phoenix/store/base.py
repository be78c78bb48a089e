"""The store: one interface, two implementations.

`journal.Journal` (SQLite in the state directory, the embedded default) and
`pgstore.PgStore` (one PostgreSQL database shared by many masters, chosen by
a `postgresql://` URL in the `store` setting) both satisfy `Store`; every
part of the master, and the commands, depend on this protocol only. The
contract tests (tests/store/) run the same cases against both.

psycopg is imported only when a PostgreSQL store is opened: the SQLite path
must not need it installed.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol

from phoenix.linux.untrusted import storable
from phoenix.store.sqlite import Job, Journal, JournalError, OpenAttempt

if TYPE_CHECKING:
    from phoenix.store.postgres import PgStore

SQLITE = "sqlite"
URL_SCHEMES = ("postgresql://", "postgres://")


class Store(Protocol):
    """What the master, the commands and the client use of a store. A shared
    store (`shared` True) is written by many masters at once; the master then
    runs a lease (leasekeeper.py) and claims with `claim` instead of
    `pending` + `begin_attempt`."""

    shared: bool

    def close(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None: ...

    # submission (any process)
    def submit(self, target: str, params_json: str, key: str | None = None) -> tuple[int, bool]: ...
    def submit_many(self, jobs: Iterable[tuple[str, str, str]]) -> list[tuple[int, bool]]: ...

    # the master's writes
    def pending(self, limit: int) -> list[Job]: ...
    def claim(self, generation: int, pid: int | None, start_time: int | None) -> tuple[Job, int] | None: ...
    def next_due_in(self) -> float | None: ...
    def begin_attempt(self, job: Job, generation: int, pid: int | None, start_time: int | None) -> int: ...
    def end_attempt(self, attempt_id: int, job_id: int, *, outcome: str, reason: str | None, error: str | None,
                    result_json: str | None, max_rss_kb: int | None, job_state: str, counts_as_failure: bool,
                    retry_delay: float | None = None, callback: str | None, attempt_n: int,
                    durable: bool = False) -> tuple[bool, int | None]: ...
    def hold_finals(self, finals: list[tuple[int, str]]) -> None: ...
    def fail_without_attempt(self, job_id: int, error: str) -> int | None: ...
    # False: fenced (a shared store's callback another master owns now); None: no fencing (one master)
    def callback_started(self, callback_id: int) -> bool | None: ...
    def callback_done(self, callback_id: int, error: str | None) -> bool | None: ...
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
    def meta(self, name: str, default: Any = None) -> Any: ...
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
                  limit: int, after: tuple[float, int] | None = None) -> tuple[list[dict[str, Any]], int]: ...
    def job_by_key(self, key: str) -> dict[str, Any] | None: ...
    def attempts_of(self, job_id: int) -> list[dict[str, Any]]: ...
    def retry(self, keys: list[str] | None, target: str | None = None) -> list[str]: ...
    def cancel_pending(self, key: str) -> str | None: ...
    def request_cancel(self, attempt_id: int) -> None: ...
    def prune(self, *, finished_before: float, failed_before: float | None, batch: int = 500) -> dict[str, int]: ...


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


def open_store(store: str, journal_path: str | Path, *, node: str | None = None, create: bool = True,
               verify: bool = False, lease_ttl: float = 30.0, reads_only: bool = False) -> Journal | PgStore:
    """The store the `store` setting names: the state directory's SQLite
    journal, or the PostgreSQL database at the URL (as `node`, if a master).
    `reads_only`: for a command that only looks (see PgStore)."""
    check_setting(store)
    if store == SQLITE:
        return Journal(journal_path, create=create, verify=verify)
    from phoenix.store.postgres import PgStore  # psycopg only when asked for

    return PgStore(store, node=node, lease_ttl=lease_ttl, reads_only=reads_only)


def _redact(url: str) -> str:
    """A URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _at, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


redact = _redact
