"""Opening the store the `store` setting names. Here, not in base.py, so that
the interface imports no backend; each backend is imported when asked for
(psycopg only for a PostgreSQL store)."""

from __future__ import annotations

from pathlib import Path

from phoenix.store.base import SQLITE, Store, Upgrade, check_setting


def open_store(store: str, journal_path: str | Path | None = None, *, node: str | None = None, create: bool = True,
               verify: bool = False, lease_ttl: float = 30.0, reads_only: bool = False,
               upgrade: Upgrade = "alone") -> Store:
    """The store the `store` setting names: the state directory's SQLite
    journal, or the PostgreSQL database at the URL (as `node`, if a master).
    `reads_only`: for a command that only looks (see PgStore). `upgrade`: an
    older journal's (sqlite.Journal; `phoenix store migrate` upgrades PostgreSQL)."""
    check_setting(store)
    if store == SQLITE:
        if journal_path is None:
            raise ValueError("the sqlite store is a file: open_store needs its path")
        from phoenix.store.sqlite import Journal

        return Journal(journal_path, create=create, verify=verify, upgrade=upgrade)
    from phoenix.store.postgres import PgStore

    return PgStore(store, node=node, lease_ttl=lease_ttl, reads_only=reads_only)
