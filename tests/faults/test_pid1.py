"""Phoenix as PID 1 of a container, without Docker: the master runs as init
of a new PID namespace (`unshare --pid --fork --mount-proc --kill-child`),
which is what `docker run` makes of an exec-form CMD. Signals are sent from
this (the parent) namespace to the master's outer pid, as `docker stop` and
`docker kill` do; `nsenter` into the namespace stands in for `docker exec`.

What a container's init must do, and what is checked here:
- reap every orphan of the namespace (a job killed from outside leaves its
  daemon and its zombie; a `docker exec` leaves its own): none is left;
- read TERM sent from outside the namespace (the kernel drops a signal for
  which an init has no handler, unless it is blocked: Phoenix blocks its
  signals and reads them from a signalfd), and stop within docker's 10 s;
- replace itself on USR2 in place, keeping PID 1 and its running jobs;
- refuse what would make PID 1 exit while jobs run (the kernel would kill
  them all): a fork-mode replacement and `stop --leave-running`;
- the image (deploy/Dockerfile) runs it that way.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from phoenix.linux import procfs
from phoenix.store.sqlite import Journal
from phoenix.wire import control
from tests import driver
from tests.conftest import PYTHON, REPO, phoenix_cli, wait_for

APP = "tests.apps.pid1"
KILL_GRACE = 1.0  # tests.apps.pid1's kill_grace
DOCKER_STOP_TIMEOUT = 10.0  # docker stop's default grace before SIGKILL


pytestmark = pytest.mark.skipif((reason := driver.namespaces_unavailable()) is not None, reason=reason or "")


class Pid1Master(driver.Master):
    """`phoenix start` as PID 1 of its own PID namespace. `proc` is the
    unshare process (it exits with the master's status); `init` is the
    master's pid as seen from here."""

    def __init__(self, state_dir: Path, *args: str) -> None:
        super().__init__(state_dir, f"{APP}:app", *args, launcher=(*driver.UNSHARE, PYTHON, "-m", "phoenix"), cwd=REPO)

    def start(self, wait_ready: bool = True) -> "Pid1Master":
        super().start(wait_ready)
        self.init = wait_for(lambda: _children(self.pid), 10.0, "unshare to fork the namespace's init")[0]
        self.namespace = os.readlink(f"/proc/{self.init}/ns/pid")
        return self

    def signal(self, signum: int) -> None:
        os.kill(self.init, signum)  # as docker does: to the container's PID 1, from outside

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # --kill-child: the namespace's init dies with it, and every process of it
            self.proc.wait()

    def processes(self) -> dict[int, tuple[int, str, int]]:
        """Every process of the namespace: its pid there -> (pid here, state letter, parent's pid here)."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") != self.namespace:
                    continue
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue  # gone meanwhile
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            inner = int(fields["NSpid"].split()[-1])
            found[inner] = (int(entry), fields["State"].split()[0], int(fields["PPid"]))
        return found

    def in_namespace(self, *command: str, **options: object) -> subprocess.CompletedProcess[str]:
        """`command` run inside the namespace, as `docker exec` runs it."""
        return subprocess.run(["nsenter", "--target", str(self.init), "--pid", "--mount", f"--wd={REPO}", "--",
                               *command], capture_output=True, text=True, timeout=60, **options)  # type: ignore


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.fixture
def pid1(state_dir: Path):
    started: list[Pid1Master] = []

    def make(*args: str) -> Pid1Master:
        master = Pid1Master(state_dir, *args)
        started.append(master)
        return master.start()

    yield make
    for master in started:
        master.stop()


def _submit(master: Pid1Master, target: str, params: dict[str, object], key: str) -> None:
    journal = Journal(master.paths.journal)
    try:
        journal.submit(f"{APP}:{target}", json.dumps(params), key)
    finally:
        journal.close()
    control.request(master.paths.control_socket, {"cmd": "wake"}, timeout=5.0)


def _running(master: Pid1Master, key: str) -> dict[str, object]:
    return wait_for(lambda: (j := master.jobs().get(key)) and j["pid"] and j["state"] == "running" and j,
                    15.0, f"job {key} to run")


def _read_pids(path: Path) -> dict[str, int]:
    wait_for(path.exists, 15.0, f"the job to write {path.name}")
    return json.loads(path.read_text())


def test_pid1_reaps_every_orphan_and_zombie_of_its_namespace(pid1, tmp_path: Path):
    master = pid1()
    # A job killed from outside (as the OOM killer does): its daemon and its
    # unwaited child are reparented to the master, the namespace's init.
    _submit(master, "leave_orphans", {"sleep": 1.5, "pidfile": str(tmp_path / "killed.json"), "end": "sigkill"},
            "killed")
    # A job that finishes: its own process ends what it left (it is a subreaper).
    _submit(master, "leave_orphans", {"sleep": 1.5, "pidfile": str(tmp_path / "finished.json"), "end": "finish"},
            "finished")
    killed = _read_pids(tmp_path / "killed.json")
    finished = _read_pids(tmp_path / "finished.json")
    # `docker exec` leaves an orphan and a zombie: its process's parent is
    # outside the namespace, so they land on PID 1 too.
    leaver = master.in_namespace(PYTHON, "-c", (
        "import os, time\n"
        "zombie = os.fork()\n"
        "if zombie == 0: os._exit(0)\n"
        "daemon = os.fork()\n"
        "if daemon == 0: time.sleep(1.5); os._exit(0)\n"
        "print(daemon, zombie)\n"))
    assert leaver.returncode == 0, leaver.stderr
    exec_daemon, exec_zombie = (int(p) for p in leaver.stdout.split())

    # The orphans do land on the master (else this test would prove nothing);
    # the killed job's daemon once the job is dead (it may be dying now).
    for daemon in (killed["daemon"], exec_daemon):
        wait_for(lambda d=daemon: (found := master.processes().get(d)) is None or found[2] == master.init,
                 10.0, f"daemon {daemon} to be reparented to PID 1")

    left = {killed["daemon"], killed["zombie"], finished["daemon"], finished["zombie"], exec_daemon, exec_zombie}

    def clean() -> bool:
        processes = master.processes()
        return not (left & processes.keys()) and not [p for p, (_, state, _) in processes.items() if state == "Z"]

    wait_for(clean, 10.0, "every orphan and zombie of the namespace to be reaped")
    jobs = master.wait_jobs_done(["killed", "finished"])
    assert jobs["killed"]["outcome"] == "signalled" and jobs["finished"]["outcome"] == "finished"
    assert master.processes()[1][0] == master.init  # still PID 1, still running


def test_a_term_sent_while_the_app_imports_stops_pid1_once_it_is_up(state_dir: Path, tmp_path: Path):
    """An outside check: PID 1 ignores a signal it has no handler for, so a
    TERM during a slow import was lost and the master ran on (10 minutes)."""
    master = Pid1Master(state_dir)
    master.env["PHOENIX_TEST_IMPORT_MARK"] = str(tmp_path / "importing")
    master.start(wait_ready=False)
    try:
        wait_for((tmp_path / "importing").exists, 10.0, "the app's import to begin")
        assert "ready generation=" not in master.log()  # still importing the app
        master.signal(signal.SIGTERM)
        assert master.wait_exit(DOCKER_STOP_TIMEOUT) == 0, master.log()[-2000:]
        assert "ready generation=1" in master.log() and "stop mode=term" in master.log()
    finally:
        master.stop()


def test_term_from_outside_the_namespace_stops_pid1_within_docker_stop_timeout(pid1, tmp_path: Path):
    master = pid1()
    _submit(master, "ignores_term", {}, "stubborn")
    _submit(master, "run_until_file", {"file": str(tmp_path / "never")}, "polite")
    stubborn, polite = _running(master, "stubborn"), _running(master, "polite")
    health = master.in_namespace(PYTHON, "-m", "phoenix", "status", "--state-dir", str(master.state_dir))
    assert health.returncode == 0, health.stdout + health.stderr  # the image's HEALTHCHECK
    assert "pid 1 " in health.stdout

    started = time.monotonic()
    master.signal(signal.SIGTERM)  # docker stop
    assert master.wait_exit(DOCKER_STOP_TIMEOUT) == 0
    took = time.monotonic() - started
    # TERM to the jobs, KILL after kill_grace to the one that ignores it, exit.
    assert took < KILL_GRACE + 3.0, f"stop took {took:.2f} s"
    log = master.log()
    assert "stop mode=term running=2" in log, log[-2000:]
    assert not master.processes(), "processes of the namespace left after its init exited"
    jobs = master.jobs()
    assert jobs["stubborn"]["state"] == jobs["polite"]["state"] == "pending"  # interrupted, run on the next start
    assert stubborn["pid"] and polite["pid"]
    assert phoenix_cli("status", state_dir=master.state_dir).returncode == 3  # unhealthy once stopped


def test_usr2_replaces_pid1_in_place_and_the_running_job_survives(pid1, tmp_path: Path):
    master = pid1()
    go = tmp_path / "go"
    _submit(master, "run_until_file", {"file": str(go)}, "survivor")
    job = _running(master, "survivor")
    job_outer = next(outer for inner, (outer, _, _) in master.processes().items() if inner == job["pid"])
    job_start = procfs.start_time(job_outer)

    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2 pid=1 ", what="the replaced master to be ready as PID 1")
    assert master.processes()[1][0] == master.init  # the same process: exec in place
    assert procfs.start_time(job_outer) == job_start  # the same job process, never restarted
    assert "kill " not in master.log()

    go.touch()
    jobs = master.wait_jobs_done(["survivor"])
    assert jobs["survivor"]["outcome"] == "finished" and jobs["survivor"]["attempt"] == 1


def test_a_stop_run_inside_the_namespace_exits_on_its_own_before_pid1_does(pid1, tmp_path: Path):
    """A Kubernetes preStop hook (`phoenix stop` exec'd in the container) is a
    process of the namespace: when the master, its init, exits, the kernel
    SIGKILLs it, and the kubelet reports the hook failed (exit 137). The
    master waits (briefly) for it to exit first."""
    master = pid1()
    _submit(master, "run_until_file", {"file": str(tmp_path / "never")}, "interrupted")
    _running(master, "interrupted")
    stop = master.in_namespace(PYTHON, "-m", "phoenix", "stop", "--drain", "--timeout", "0.2", "--state-dir",
                               str(master.state_dir))
    assert stop.returncode == 0, (stop.returncode, stop.stdout, stop.stderr)
    assert stop.stdout == "stopped master pid 1\n"
    assert master.wait_exit() == 0
    assert master.jobs()["interrupted"]["state"] == "pending"


def test_fork_replacement_is_refused_as_pid1(pid1, tmp_path: Path):
    """The old master (PID 1) would exit, and the kernel kill every process
    of the namespace: the new master and the jobs."""
    master = pid1("--reexec", "fork")
    _submit(master, "run_until_file", {"file": str(tmp_path / "go")}, "survivor")
    job = _running(master, "survivor")

    reload = phoenix_cli("reload", "--wait", "--timeout", "20", state_dir=master.state_dir)
    assert reload.returncode == 1, reload.stdout + reload.stderr
    assert 'reexec = "fork" cannot work as PID 1' in reload.stderr
    assert master.proc is not None and master.proc.poll() is None
    assert master.processes()[1][0] == master.init
    assert master.live()["running"][str(job["id"])]["pid"] == job["pid"]


def test_stop_leave_running_is_refused_as_pid1(pid1, tmp_path: Path):
    """The master would exit, and the kernel kill the jobs it meant to leave running."""
    master = pid1()
    _submit(master, "run_until_file", {"file": str(tmp_path / "go")}, "survivor")
    job = _running(master, "survivor")

    stop = phoenix_cli("stop", "--leave-running", "--timeout", "10", state_dir=master.state_dir)
    assert stop.returncode == 1, stop.stdout + stop.stderr
    assert "--leave-running cannot work as PID 1" in stop.stderr
    assert master.proc is not None and master.proc.poll() is None
    assert master.live()["running"][str(job["id"])]["pid"] == job["pid"]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_the_image_runs_phoenix_as_pid1_as_tested_here():
    """deploy/Dockerfile (docker is not needed to read it): a slim Python
    3.11+ base, a non-root user, TERM to stop, `phoenix status` as the
    health check, the example app in exec form (Phoenix is PID 1, not a
    shell) with its state under a volume."""
    instructions = _instructions(REPO / "deploy" / "Dockerfile")
    by_name: dict[str, list[str]] = {}
    for keyword, rest in instructions:
        by_name.setdefault(keyword, []).append(rest)
    args = dict(a.split("=", 1) for a in by_name.get("ARG", []) if "=" in a)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], by_name["FROM"][-1])
    version = re.match(r"python:3\.(\d+)-slim", base)
    assert version and int(version.group(1)) >= 11, base
    assert by_name["USER"][-1].split(":")[0] not in ("root", "0")
    assert by_name["STOPSIGNAL"] == ["SIGTERM"]
    assert any("phoenix status" in h for h in by_name["HEALTHCHECK"])
    assert json.loads(by_name["CMD"][-1])[:3] == ["phoenix", "start", "examples.feeds:app"]
    env = " ".join(by_name["ENV"])
    state_dir = re.search(r"PHOENIX_STATE_DIR=(\S+)", env)
    volumes = json.loads(by_name["VOLUME"][-1])
    assert state_dir and any(state_dir.group(1).startswith(v.rstrip("/") + "/") for v in volumes)
    assert "reexec" not in env.lower()  # in place (the default): fork mode cannot work as PID 1
