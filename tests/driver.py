"""The one driver of a real Phoenix master, for the tests and the benchmarks:
`phoenix start APP --state-dir D ...` in its own process with its log in a
file, waits on log lines with deadlines, the status as `phoenix status --json`
prints it and as the control socket answers it, the journal, signals, stop.

Where it lives, and why here: `tests/` and `bench/` are both top-level
packages of the checkout, never installed (the distribution ships only
`phoenix`), and both are run from the repository root: `python -m pytest`
puts the root on sys.path (tests/ is a package) and `python -m bench` only
finds `bench` because the root is the working directory. So `tests.driver` is
importable from either side without installing anything. The dependency goes
one way, bench -> tests.driver, and this module imports only the standard
library and `phoenix`: no pytest (the benchmarks do not need the dev extra)
and nothing of bench or of tests/conftest.py (importing it has no side
effects such as the test suite's leak marker). Each side keeps a thin
subclass for what only it needs: tests/conftest.py `Master` (the tests' jobs
app and callbacks file), bench/master.py `PhoenixMaster` (the pid registry,
slots through a config file and SIGHUP).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from phoenix.linux.paths import StatePaths
from phoenix.store.sqlite import Journal
from phoenix.wire import control

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PHOENIX = (PYTHON, "-m", "phoenix")  # this interpreter's phoenix, whatever is on PATH


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def phoenix_cli(*args: str, state_dir: Path | None = None, env: dict[str, str] | None = None,
                cwd: Path = REPO, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """One `phoenix ...` command, run to the end, output captured."""
    command = [*PHOENIX, *args]
    if state_dir is not None:
        command += ["--state-dir", str(state_dir)]
    return subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


class Master:
    """A `phoenix start` in its own process, with its log in a file.

    `env` is laid over `base_env` (default: this process's environment);
    `launcher` is the command that runs phoenix; `popen` starts the process
    (a subprocess.Popen look-alike, e.g. one that records the pid for cleanup).
    """

    def __init__(self, state_dir: Path, app: str, *args: str, env: Mapping[str, str] | None = None,
                 base_env: Mapping[str, str] | None = None, cwd: Path = REPO, log_path: Path | None = None,
                 launcher: Sequence[str] = PHOENIX, popen: Callable[..., subprocess.Popen[Any]] = subprocess.Popen
                 ) -> None:
        self.state_dir = state_dir
        self.paths = StatePaths(state_dir)
        # Beside the state dir by default: outside its file system when a test breaks that.
        self.log_path = log_path or state_dir.parent / f"{state_dir.name}-master.log"
        self.env = {**(os.environ if base_env is None else base_env), **(env or {})}
        self.command = [*launcher, "start", app, "--state-dir", str(state_dir), *args]
        self.cwd = cwd
        self.popen = popen
        self.proc: subprocess.Popen[Any] | None = None
        self.log_offset = 0

    # -- life -----------------------------------------------------------------------

    def start(self, wait_ready: bool = True) -> "Master":
        # Several masters may share one log (a restart on the same state dir):
        # this one's lines start here.
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log_file:  # the child keeps its own copy
            self.proc = self.popen(self.command, cwd=self.cwd, env=self.env, stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait_ready:
            self.wait_log("ready generation=", what="the master to be ready", own=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"master did not exit within {timeout} s:\n{self.log()[-3000:]}") from None

    def stop(self, timeout: float = 20.0) -> None:
        """TERM the master (children are TERMed by it) and wait; KILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        remove_memory_group(self.state_dir)

    # -- the log ----------------------------------------------------------------------

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
                raise AssertionError(f"master exited ({self.proc.returncode}) before logging {text!r}:\n"
                                     f"{self.log()[-3000:]}")
            return lines().count(text) >= count

        wait_for(seen, timeout, what or f"{text!r} in the master's log")
        return self.log()

    # -- status -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `phoenix status --json` prints, as a user sees it (also when stopped)."""
        result = phoenix_cli("status", "--json", state_dir=self.state_dir)
        assert result.returncode in (0, 3), result.stderr
        return json.loads(result.stdout)

    def live(self, timeout: float = 10.0) -> dict[str, Any]:
        """The running master's own reply to a status request on the control
        socket (what `phoenix status` reads): `master` and `running` by job id."""
        return control.request(self.paths.control_socket, {"cmd": "status"}, timeout=timeout)

    # -- jobs and the journal ------------------------------------------------------------

    def jobs(self) -> dict[str, dict[str, Any]]:
        """Every job of the journal by key, joined with the live view."""
        from phoenix.cli.status import collect

        return {job["key"]: job for job in collect(self.paths, page=(0, 10**9))[0]["jobs"]}  # one page: all

    def counts(self) -> dict[str, int]:
        """Jobs of the journal per state."""
        journal = Journal(self.paths.journal)
        try:
            return journal.counts()
        finally:
            journal.close()

    def submit(self, target: str, params: Any = None, key: str | None = None) -> int:
        """One job through `phoenix submit`; returns its id."""
        args = ["submit", target, json.dumps(params)]
        if key:
            args += ["--key", key]
        result = phoenix_cli(*args, state_dir=self.state_dir)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["id"]

    def submit_many(self, jobs: Iterable[tuple[str, Any, str]]) -> None:
        """(target, params, key) triples written to the journal in one
        transaction, without waking the master (setup before a start)."""
        journal = Journal(self.paths.journal)
        try:
            journal.submit_many((target, json.dumps(params, separators=(",", ":")), key)
                                for target, params, key in jobs)
        finally:
            journal.close()

    def wait_jobs_done(self, keys: list[str] | None = None, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        def done() -> dict[str, dict[str, Any]] | None:
            jobs = self.jobs()
            wanted = [jobs.get(k) for k in keys] if keys else list(jobs.values())
            if wanted and all(j is not None and j["state"] in ("finished", "failed") for j in wanted):
                return jobs
            return None

        return wait_for(done, timeout, f"jobs {keys or 'all'} to end")


def remove_memory_group(state_dir: Path) -> None:
    """The memory cgroup group of the master of `state_dir`, once no master runs
    there: a master SIGKILLed by a test (and never started again) leaves it on
    the host, where its next start would have removed it."""
    from phoenix.linux import cgroups
    from phoenix.linux.pidfile import lock_held
    from phoenix.rules.memory import group_name

    if lock_held(StatePaths(state_dir).lockfile):
        return  # another master of this state directory runs: the group is its
    try:
        own = cgroups.own_paths(cgroups.read("/proc/self/cgroup")).get(cgroups.V1)
        mounted = cgroups.mounts(cgroups.read("/proc/self/mountinfo")).get(cgroups.V1)
    except OSError:
        return
    parent = cgroups.directory(*mounted, own) if own is not None and mounted is not None else None
    group = os.path.join(parent, group_name(os.path.realpath(state_dir))) if parent else None
    if group is None or not os.path.isdir(group):
        return
    for inner, _dirs, _files in sorted(os.walk(group), key=lambda walked: -len(walked[0])):
        if cgroups.processes(inner):
            return  # still in use: left as it is
        try:
            os.rmdir(inner)
        except OSError:
            return


# A process as PID 1 of a new PID namespace, as a container's init is (tests/faults/test_pid1.py,
# tests/test_kubernetes.py); --kill-child: the namespace dies with the unshare process.
UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")


def namespaces_unavailable() -> str | None:
    """Why a test cannot make PID namespaces here, or None if it can."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "unshare/nsenter (util-linux) not installed"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot create a PID namespace here: {probe.stderr.strip() or probe.returncode}"
    return None
