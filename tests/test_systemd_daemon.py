"""The ways Phoenix is run in production: under honcho (a Procfile), under
systemd (sd_notify, checked against a notify socket this test binds), as a
daemon (`phoenix start --daemon`), and deployed by deploy/deploy.sh through a
`current` symlink."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from phoenix.linux.paths import StatePaths
from tests.apps.replace_tools import (
    APP,
    SLOW,
    UNTIL,
    alive,
    kill_pids,
    live,
    read_pid,
    stat_fields,
    stop_foreign_master,
    wait_generation,
)
from tests.conftest import PYTHON, REPO, phoenix_cli, wait_for

BIN = Path(PYTHON).parent
UCRED = struct.Struct("3i")


class NotifySocket:
    """What systemd listens on for sd_notify: an AF_UNIX datagram socket (here
    in the abstract namespace), with the sender's pid from SCM_CREDENTIALS."""

    def __init__(self) -> None:
        self.name = f"phoenix-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + self.name)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        self.messages: list[tuple[int, dict[str, str]]] = []  # (sender pid, fields)

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": "@" + self.name}

    def _receive(self) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
            except BlockingIOError:
                return
            pid = next(UCRED.unpack_from(d)[0] for level, kind, d in ancdata
                       if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((pid, fields))

    def wait(self, predicate, what: str, timeout: float = SLOW) -> int:
        """Wait until some message (after those already matched) satisfies `predicate(pid, fields)`; its index."""
        start = getattr(self, "_cursor", 0)

        def found() -> int | None:
            self._receive()
            for index in range(start, len(self.messages)):
                if predicate(*self.messages[index]):
                    return index + 1  # 1-based, so that index 0 is truthy
            return None

        index = wait_for(found, timeout, what) - 1
        self._cursor = index + 1
        return index

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket():
    sock = NotifySocket()
    yield sock
    sock.close()


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# -- sd_notify -------------------------------------------------------------------------


def test_sd_notify_ready_reloading_ready_and_status(master_factory, state_dir, notify_socket):
    master = master_factory(app=APP, env=notify_socket.env)
    pid = master.pid
    notify_socket.wait(lambda p, f: p == pid and f.get("READY") == "1", "READY=1")
    notify_socket.wait(lambda p, f: p == pid and "STATUS" in f, "STATUS=")
    status = next(f["STATUS"] for p, f in notify_socket.messages if "STATUS" in f)
    assert "gen 1" in status and "running" in status and "pending" in status

    before = monotonic_usec()
    master.signal(signal.SIGUSR2)
    reloading = notify_socket.wait(lambda p, f: p == pid and f.get("RELOADING") == "1", "RELOADING=1")
    fields = notify_socket.messages[reloading][1]
    assert before <= int(fields["MONOTONIC_USEC"]) <= monotonic_usec()  # CLOCK_MONOTONIC, in microseconds
    notify_socket.wait(lambda p, f: p == pid and f.get("READY") == "1", "READY=1 after the exec")
    notify_socket.wait(lambda p, f: p == pid and "gen 2" in f.get("STATUS", ""), "STATUS= of generation 2")
    assert live(state_dir)["master"]["generation"] == 2
    assert all(p == pid for p, _ in notify_socket.messages)  # NotifyAccess=main: only ever the main pid


def test_sd_notify_in_fork_mode_names_the_new_main_pid(master_factory, state_dir, notify_socket):
    master = master_factory("--reexec", "fork", app=APP, env=notify_socket.env)
    old = master.pid
    notify_socket.wait(lambda p, f: p == old and f.get("READY") == "1", "READY=1")
    new = None
    try:
        master.signal(signal.SIGUSR2)
        notify_socket.wait(lambda p, f: p == old and f.get("RELOADING") == "1" and "MONOTONIC_USEC" in f,
                           "RELOADING=1 from the old master")
        # From the old master, still the main pid: MAINPID= of the new one, with READY=1.
        index = notify_socket.wait(lambda p, f: p == old and "MAINPID" in f, "MAINPID= from the old master")
        fields = notify_socket.messages[index][1]
        new = int(fields["MAINPID"])
        assert new != old and fields.get("READY") == "1"
        assert master.wait_exit(SLOW) == 0
        assert wait_generation(state_dir, 2)["master"]["pid"] == new
        notify_socket.wait(lambda p, f: p == new and "gen 2" in f.get("STATUS", ""), "STATUS= from the new master")
    finally:
        new = new or read_pid(StatePaths(state_dir).pidfile)
        if new and new != old:
            stop_foreign_master(new)


def test_watchdog_keepalives_when_systemd_asks_for_them(master_factory, state_dir, notify_socket):
    master = master_factory(app=APP, env={**notify_socket.env, "WATCHDOG_USEC": "300000"})
    pid = master.pid
    for n in range(3):
        notify_socket.wait(lambda p, f: p == pid and f.get("WATCHDOG") == "1", f"WATCHDOG=1 number {n + 1}")
    master.signal(signal.SIGUSR2)
    notify_socket.wait(lambda p, f: p == pid and f.get("READY") == "1" and "MAINPID" not in f, "READY=1 after exec")
    for n in range(2):  # the new image keeps them coming
        notify_socket.wait(lambda p, f: p == pid and f.get("WATCHDOG") == "1", f"WATCHDOG=1 after exec, {n + 1}")
    watchdog = [i for i, (p, f) in enumerate(notify_socket.messages) if f.get("WATCHDOG") == "1"]
    assert len(watchdog) >= 5


def test_no_watchdog_keepalives_for_another_pid(master_factory, state_dir, notify_socket):
    """WATCHDOG_PID names the process systemd watches: a master that is not it stays quiet."""
    master = master_factory(app=APP, env={**notify_socket.env, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    pid = master.pid
    notify_socket.wait(lambda p, f: p == pid and f.get("READY") == "1", "READY=1")
    # The idle loop sends STATUS= about once a second (at most every 0.5 s): by
    # the third, a keep-alive every 0.05 s would have come ten times over.
    for n in range(3):
        notify_socket.wait(lambda p, f: p == pid and "STATUS" in f, f"STATUS= number {n + 1}")
    assert not any("WATCHDOG" in f for _, f in notify_socket.messages)


def test_deploy_files_are_consistent():
    unit = (REPO / "deploy" / "phoenix.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["KillMode"] == "process"
    assert settings["ExecReload"] == "/bin/kill -USR2 $MAINPID"
    comment = unit[: unit.index("\nKillMode=process")].rsplit("\n\n", 1)[1]
    assert "crash" in comment and "jobs keep running" in comment  # the reason, next to the setting
    script = REPO / "deploy" / "deploy.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0


# -- honcho (Procfile) -------------------------------------------------------------------


def test_honcho_keeps_running_while_usr2_replaces_the_master(tmp_path, state_dir):
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"phoenix: exec python -m phoenix start {APP}\n")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "PHOENIX_STATE_DIR": str(state_dir)}
    log_path = tmp_path / "honcho.log"
    with open(log_path, "wb") as log:
        honcho = subprocess.Popen([PYTHON, "-m", "honcho", "start", "-f", str(procfile)], cwd=tmp_path, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    paths = StatePaths(state_dir)
    try:
        status = wait_generation(state_dir, 1)
        master = status["master"]["pid"]
        assert read_pid(paths.pidfile) == master
        done = tmp_path / "done"
        result = phoenix_cli("submit", UNTIL, json.dumps({"path": str(done)}), "--key", "job", state_dir=state_dir)
        assert result.returncode == 0, result.stderr
        child = wait_for(lambda: (s := live(state_dir)) and s["running"] and next(iter(s["running"].values()))["pid"],
                         timeout=SLOW, what="the job to run")

        os.kill(master, signal.SIGUSR2)
        status = wait_generation(state_dir, 2)
        assert status["master"]["pid"] == master
        assert honcho.poll() is None, log_path.read_text()
        assert alive(child)
        done.touch()
        wait_for(lambda: (s := live(state_dir)) and not s["running"], timeout=SLOW, what="the job to end")
        assert honcho.poll() is None
        result = phoenix_cli("status", "--json", state_dir=state_dir)
        job = json.loads(result.stdout)["jobs"][0]
        assert job["state"] == "finished" and job["attempt"] == 1 and job["result"]["pid"] == child

        honcho.send_signal(signal.SIGTERM)
        honcho.wait(20)
        wait_for(lambda: not alive(master), timeout=SLOW, what="the master to exit with honcho")
        text = log_path.read_text()
        assert "ready generation=2" in text and "exit pid=" in text
    finally:
        if honcho.poll() is None:
            honcho.kill()
            honcho.wait()


# -- daemon -------------------------------------------------------------------------------


def test_daemon_starts_detached_takes_usr2_and_stops(state_dir, tmp_path):
    paths = StatePaths(state_dir)
    daemon = None
    try:
        result = phoenix_cli("start", APP, "--daemon", state_dir=state_dir)
        assert result.returncode == 0, result.stderr
        assert "ready" in result.stdout
        daemon = read_pid(paths.pidfile)
        assert daemon is not None and alive(daemon)
        fields = stat_fields(daemon)
        assert int(fields[1]) != os.getpid()  # detached: not our child; the launcher is gone
        assert live(state_dir)["master"]["pid"] == daemon

        done = tmp_path / "done"
        result = phoenix_cli("submit", UNTIL, json.dumps({"path": str(done)}), "--key", "job", state_dir=state_dir)
        assert result.returncode == 0
        child = wait_for(lambda: (s := live(state_dir)) and s["running"] and next(iter(s["running"].values()))["pid"],
                         timeout=SLOW, what="the job to run")
        os.kill(daemon, signal.SIGUSR2)
        status = wait_generation(state_dir, 2)
        assert status["master"]["pid"] == daemon == read_pid(paths.pidfile)  # still the same, still detached
        done.touch()
        wait_for(lambda: (s := live(state_dir)) and not s["running"], timeout=SLOW, what="the job to end")
        job = json.loads(phoenix_cli("status", "--json", state_dir=state_dir).stdout)["jobs"][0]
        assert job["state"] == "finished" and job["attempt"] == 1 and job["result"]["pid"] == child

        result = phoenix_cli("stop", state_dir=state_dir)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: not alive(daemon), timeout=SLOW, what="the daemon to exit")
        log = (state_dir / "phoenix.log").read_text()
        assert "ready generation=1" in log and "ready generation=2" in log and f"exit pid={daemon}" in log
    finally:
        if daemon is not None and alive(daemon):
            kill_pids([daemon])


def test_a_daemon_that_cannot_come_up_fails_the_launcher_with_the_reason(state_dir, tmp_path):
    result = phoenix_cli("start", APP, "--daemon", "--log-file", str(tmp_path / "no" / "such" / "dir" / "x.log"),
                         state_dir=state_dir)
    assert result.returncode == 1, result
    assert "did not start" in result.stderr and "No such file or directory" in result.stderr, result.stderr
    assert read_pid(StatePaths(state_dir).pidfile) is None


def test_a_daemon_on_a_busy_state_dir_fails_the_launcher(master_factory, state_dir):
    master = master_factory(app=APP)
    result = phoenix_cli("start", APP, "--daemon", state_dir=state_dir)
    assert result.returncode == 1, result
    assert "already running" in result.stderr, result.stderr
    assert live(state_dir)["master"]["pid"] == master.pid  # the running one is untouched


# -- deploy.sh, through a `current` symlink ----------------------------------------------------


def _release(root: Path, name: str, broken: bool = False, broken_after_check: bool = False) -> Path:
    directory = root / "releases" / name
    directory.mkdir(parents=True)
    source = (REPO / "tests" / "apps" / "replace.py").read_text()
    source += f'\n\nRELEASE = "{name}"\n\n\n@app.job\ndef which(params):\n    return {{"release": RELEASE}}\n'
    if broken:
        source += "\nimport module_that_does_not_exist_anywhere\n"
    if broken_after_check:  # passes `phoenix check`, fails in the new master image (it has PHOENIX_FDS)
        source += "\nif os.environ.get('PHOENIX_FDS'):\n    raise RuntimeError('broken only in the master')\n"
    (directory / "deployed_app.py").write_text(source)
    return directory


def test_deploy_script_switches_the_symlink_and_reloads(master_factory, state_dir, tmp_path):
    root = tmp_path / "srv"
    r1, r2, r3 = _release(root, "r1"), _release(root, "r2"), _release(root, "r3", broken=True)
    current = root / "current"
    current.symlink_to(r1)
    env = {"PWD": str(current), "PYTHONDONTWRITEBYTECODE": "1"}  # as a shell that did `cd /srv/myapp/current`
    master = master_factory(app="deployed_app:app", env=env, cwd=current)

    def submit(target: str, params: Any, key: str) -> None:
        result = phoenix_cli("submit", target, json.dumps(params), "--key", key, state_dir=state_dir, cwd=current)
        assert result.returncode == 0, result.stderr

    done = tmp_path / "done"
    submit("deployed_app:until", {"path": str(done)}, "long")
    submit("deployed_app:which", {}, "before")
    assert master.wait_jobs_done(["before"], timeout=SLOW)["before"]["result"] == {"release": "r1"}
    # PYTHONDONTWRITEBYTECODE: as in deploy/Dockerfile; imports (the check's among them) write no bytecode then.
    deploy_env = {"APP_ROOT": str(root), "PHOENIX_APP": "deployed_app:app", "PHOENIX_STATE_DIR": str(state_dir),
                  "PHOENIX": str(BIN / "phoenix"), "RELOAD_TIMEOUT": "30", "PYTHONDONTWRITEBYTECODE": "1"}

    def deploy(release: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO / "deploy" / "deploy.sh"), str(release)], env={**os.environ, **deploy_env},
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)

    result = deploy(r3)  # broken: refused before anything changes
    assert result.returncode == 1, result
    assert "module_that_does_not_exist_anywhere" in result.stderr
    assert os.readlink(current) == str(r1)
    assert live(state_dir)["master"]["generation"] == 1

    result = deploy(r2)
    assert result.returncode == 0, result
    assert os.readlink(current) == str(r2)
    # Compiled by deploy.sh: the new image loads the release's bytecode instead of compiling it in the blind window.
    assert list((r2 / "__pycache__").glob("deployed_app.*.pyc")), sorted(os.listdir(r2))
    status = live(state_dir)
    assert status["master"]["generation"] == 2 and status["master"]["pid"] == master.pid
    submit("deployed_app:which", {}, "after")
    assert master.wait_jobs_done(["after"], timeout=SLOW)["after"]["result"] == {"release": "r2"}  # the new code runs

    # The master's own preflight checks the release `current` points at now, not the one it started in.
    os.unlink(current)
    current.symlink_to(r3)
    result = phoenix_cli("reload", "--wait", state_dir=state_dir)
    assert result.returncode == 1 and "module_that_does_not_exist_anywhere" in result.stderr, result
    os.unlink(current)
    current.symlink_to(r2)

    # A release that passes the check but cannot load in the new image: the
    # master runs degraded, deploy.sh fails, switches back and reloads r2 into it.
    generation = live(state_dir)["master"]["generation"]
    result = deploy(_release(root, "r4", broken_after_check=True))
    assert result.returncode == 1, result
    assert "broken only in the master" in result.stderr and "reloading" in result.stderr, result.stderr
    assert os.readlink(current) == str(r2)
    status = live(state_dir)
    assert status["master"]["state"] == "running" and status["master"]["pid"] == master.pid
    assert status["master"]["generation"] == generation + 2
    submit("deployed_app:which", {}, "after-rollback")
    assert master.wait_jobs_done(["after-rollback"], timeout=SLOW)["after-rollback"]["result"] == {"release": "r2"}

    done.touch()
    job = master.wait_jobs_done(["long"], timeout=SLOW)["long"]
    assert job["state"] == "finished" and job["attempt"] == 1  # ran across every release, once


def test_deploy_compiles_with_the_interpreter_a_pip_installed_phoenix_names(master_factory, state_dir, tmp_path):
    # pip's /usr/local/bin/phoenix and pipx's have no `python` beside them: the script's first line names it.
    root = tmp_path / "srv"
    r1, r2, r3 = _release(root, "r1"), _release(root, "r2"), _release(root, "r3")
    current = root / "current"
    current.symlink_to(r1)
    master_factory(app="deployed_app:app", env={"PWD": str(current)}, cwd=current)
    installed = tmp_path / "usr-local-bin"
    installed.mkdir()
    (installed / "phoenix").write_text((BIN / "phoenix").read_text())  # `#!/path/to/python3`, nothing beside it
    (installed / "phoenix").chmod(0o755)
    wrapper = tmp_path / "wrapper" / "phoenix"  # a shell wrapper: no interpreter to be found
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{BIN / "phoenix"}" "$@"\n')
    wrapper.chmod(0o755)

    def deploy(release: Path, phoenix: Path) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
        env.update(APP_ROOT=str(root), PHOENIX_APP="deployed_app:app", PHOENIX_STATE_DIR=str(state_dir),
                   PHOENIX=str(phoenix), RELOAD_TIMEOUT="30", PYTHONDONTWRITEBYTECODE="1")
        return subprocess.run([str(REPO / "deploy" / "deploy.sh"), str(release)], env=env, capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)

    result = deploy(r2, installed / "phoenix")
    assert result.returncode == 0, result
    assert "warning" not in result.stderr, result.stderr
    assert list((r2 / "__pycache__").glob("deployed_app.*.pyc")), sorted(os.listdir(r2))

    result = deploy(r3, wrapper)  # deployed all the same, and said plainly what was not done
    assert result.returncode == 0, result
    assert "no Python interpreter found for" in result.stderr and "set PYTHON=" in result.stderr, result.stderr
    assert "do not compile" not in result.stderr
    assert not (r3 / "__pycache__").exists()
    assert live(state_dir)["master"]["generation"] == 3
