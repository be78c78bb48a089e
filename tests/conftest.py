"""Shared test machinery: real masters in real processes, waited on by
observable events with deadlines, and a check after every test that nothing
it started is left running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path
from typing import Any, Sequence

import pytest

from phoenix.linux import procfs
from tests import driver
from tests.driver import PYTHON, REPO, phoenix_cli, wait_for

__all__ = ["MARKER", "PYTHON", "REPO", "Master", "marked_pids", "phoenix_cli", "wait_for"]

# Every process a test starts inherits this marker; after the test, any
# process still carrying it is a leak.
MARKER = f"phoenix-test-{uuid.uuid4().hex}"
os.environ["PHOENIX_TEST_MARKER"] = MARKER
# setproctitle reuses the memory of the environment for a long title, which
# wipes /proc/PID/environ, marker included: every master and child would be
# invisible to the check below. SPT_NOENV keeps the environment (the title
# is then cut to the length of the command line, long enough for Phoenix's).
os.environ["SPT_NOENV"] = "1"


def marked_pids() -> list[int]:
    """Processes other than this one (and its ancestors) that carry the marker."""
    mine = {os.getpid()}
    pid: int | None = os.getppid()
    while pid is not None and pid > 1:
        mine.add(pid)
        pid = procfs.parent_pid(pid)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if f"PHOENIX_TEST_MARKER={MARKER}".encode() in environ:
            found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def no_process_left_behind():
    yield
    try:
        wait_for(lambda: not marked_pids(), timeout=10.0, what="the test's processes to exit")
    except AssertionError:
        leaked = marked_pids()
        details = []
        for pid in leaked:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                details.append(f"{pid}: {cmdline}")
                os.kill(pid, signal.SIGKILL)  # ours, by pid: clean up, then fail
            except OSError:
                pass
        pytest.fail(f"processes left behind: {details}")


class Master(driver.Master):
    """The shared driver (tests/driver.py) with the tests' defaults: the jobs
    app, the log beside the state dir, and the file the tests' apps append
    their callbacks to (PHOENIX_TEST_CALLBACKS), read back by `callbacks()`."""

    def __init__(self, state_dir: Path, app: str = "tests.apps.jobs:app", *args: str,
                 env: dict[str, str] | None = None, cwd: Path = REPO, log_dir: Path | None = None,
                 launcher: Sequence[str] = driver.PHOENIX) -> None:
        log_dir = log_dir or state_dir.parent  # outside the state dir's file system when a test breaks that
        self.callbacks_path = log_dir / f"{state_dir.name}-callbacks.jsonl"
        super().__init__(state_dir, app, *args, env={"PHOENIX_TEST_CALLBACKS": str(self.callbacks_path), **(env or {})},
                         cwd=cwd, log_path=log_dir / f"{state_dir.name}-master.log", launcher=launcher)

    def callbacks(self) -> list[dict[str, Any]]:
        if not self.callbacks_path.exists():
            return []
        return [json.loads(line) for line in self.callbacks_path.read_text().splitlines() if line]


@pytest.fixture
def traversable_state_dir():
    """A state dir whose parents another user can traverse (pytest's tmp_path
    parents are 0700, which would hide what Phoenix's own modes do)."""
    base = Path(tempfile.mkdtemp(prefix="phoenix-uid-"))
    base.chmod(0o755)
    yield base / "state"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def master_factory(state_dir: Path):
    started: list[Master] = []

    def make(*args: str, app: str = "tests.apps.jobs:app", env: dict[str, str] | None = None,
             cwd: Path = REPO, start: bool = True, state: Path | None = None,
             launcher: Sequence[str] = driver.PHOENIX) -> Master:
        master = Master(state or state_dir, app, *args, env=env, cwd=cwd, log_dir=state_dir.parent, launcher=launcher)
        started.append(master)
        return master.start() if start else master

    yield make
    for master in started:
        master.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session (tests/pgserver.py)."""
    from tests.pgserver import session_server

    yield from session_server()


@pytest.fixture
def pg_url(postgres_server) -> Any:
    """A fresh database with Phoenix's schema, dropped after the test: its postgresql:// URL."""
    url = postgres_server.database()
    yield url
    postgres_server.drop(url)
