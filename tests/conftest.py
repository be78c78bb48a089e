"""Shared test machinery: real masters in real processes, waited on by
observable events with deadlines, and a check after every test that nothing
it started is left running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from phoenix import procfs

REPO = Path(__file__).resolve().parent.parent
# Every process a test starts inherits this marker; after the test, any
# process still carrying it is a leak.
MARKER = f"phoenix-test-{uuid.uuid4().hex}"
os.environ["PHOENIX_TEST_MARKER"] = MARKER
PYTHON = sys.executable


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


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


def phoenix_cli(*args: str, state_dir: Path | None = None, env: dict[str, str] | None = None,
                cwd: Path = REPO, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    command = [PYTHON, "-m", "phoenix", *args]
    if state_dir is not None:
        command += ["--state-dir", str(state_dir)]
    return subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


class Master:
    """A `phoenix start` in its own process, with its log in a file."""

    def __init__(self, state_dir: Path, app: str = "tests.apps.jobs:app", *args: str,
                 env: dict[str, str] | None = None, cwd: Path = REPO, log_dir: Path | None = None) -> None:
        self.state_dir = state_dir
        log_dir = log_dir or state_dir.parent  # outside the state dir's file system when a test breaks that
        self.log_path = log_dir / f"{state_dir.name}-master.log"
        self.callbacks_path = log_dir / f"{state_dir.name}-callbacks.jsonl"
        self.env = {**os.environ, "PHOENIX_TEST_CALLBACKS": str(self.callbacks_path), **(env or {})}
        self.command = [PYTHON, "-m", "phoenix", "start", app, "--state-dir", str(state_dir), *args]
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0

    def start(self, wait_ready: bool = True) -> "Master":
        # Several masters may share one log (a restart on the same state dir):
        # this one's lines start here.
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait_ready:
            self.wait_log("ready generation=", what="the master to be ready", own=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 30.0, count: int = 1, what: str | None = None,
                 own: bool = False) -> str:
        """Wait until `text` appears `count` times in the log (with `own`, in
        this master's part of a shared log)."""

        def lines() -> str:
            log = self.log()
            return log[self.log_offset:] if own else log

        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None and lines().count(text) < count:
                raise AssertionError(f"master exited ({self.proc.returncode}) before logging {text!r}:\n{self.log()[-3000:]}")
            return lines().count(text) >= count

        wait_for(seen, timeout, what or f"{text!r} in the master's log")
        return self.log()

    def status(self) -> dict[str, Any]:
        result = phoenix_cli("status", "--json", state_dir=self.state_dir)
        assert result.returncode in (0, 3), result.stderr
        return json.loads(result.stdout)

    def jobs(self) -> dict[str, dict[str, Any]]:
        from phoenix.status import collect
        from phoenix.paths import StatePaths

        return {job["key"]: job for job in collect(StatePaths(self.state_dir))[0]["jobs"]}

    def callbacks(self) -> list[dict[str, Any]]:
        if not self.callbacks_path.exists():
            return []
        return [json.loads(line) for line in self.callbacks_path.read_text().splitlines() if line]

    def submit(self, target: str, params: Any = None, key: str | None = None) -> int:
        args = ["submit", target, json.dumps(params)]
        if key:
            args += ["--key", key]
        result = phoenix_cli(*args, state_dir=self.state_dir)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["id"]

    def wait_jobs_done(self, keys: list[str] | None = None, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        def done() -> dict[str, dict[str, Any]] | None:
            jobs = self.jobs()
            wanted = [jobs.get(k) for k in keys] if keys else list(jobs.values())
            if wanted and all(j is not None and j["state"] in ("finished", "failed") for j in wanted):
                return jobs
            return None

        return wait_for(done, timeout, f"jobs {keys or 'all'} to end")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"master did not exit within {timeout} s:\n{self.log()[-3000:]}") from None

    def stop(self) -> None:
        """TERM the master (children are TERMed by it) and wait; KILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


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
             cwd: Path = REPO, start: bool = True, state: Path | None = None) -> Master:
        master = Master(state or state_dir, app, *args, env=env, cwd=cwd, log_dir=state_dir.parent)
        started.append(master)
        return master.start() if start else master

    yield make
    for master in started:
        master.stop()
