"""A state directory deep enough that its socket paths exceed AF_UNIX's
108-byte sun_path (a release tree several levels down) works like any other:
the sockets are bound and reached through /proc/self/fd/<dirfd>/<name>. A
directory no file could be opened under is refused with one line, before
anything is created or recorded."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

from phoenix.linux.paths import StatePaths
from phoenix.linux.pidfile import read_pid
from tests.conftest import phoenix_cli, wait_for

SLEEP = "tests.apps.jobs:sleep"
SUN_PATH_MAX = 107  # bytes a socket path may have in sockaddr_un


def deep(base: Path, total: int) -> Path:
    """A state directory under `base` whose path is about `total` bytes."""
    path = base
    while len(os.fsencode(path)) < total - 60:
        path = path / ("d" * 50)
    return path / ("s" * (total - len(os.fsencode(path)) - 1))


def test_unix_address_reaches_a_long_path_for_bind_connect_and_sendto(tmp_path):
    """The short name works for every call Phoenix makes, in a forked child
    too (which opens its own directory fd)."""
    from phoenix.linux.paths import unix_address

    directory = deep(tmp_path, 200)
    directory.mkdir(parents=True)
    path = directory / "phoenix.sock"
    assert len(os.fsencode(path)) > SUN_PATH_MAX
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with unix_address(path) as address:
        server.bind(address)
    assert path.exists()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            connected = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            with unix_address(path) as address:
                connected.connect(address)
            connected.send(b"connect")
            with unix_address(path) as address:
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"sendto", address)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    server.settimeout(5)
    assert {server.recv(16), server.recv(16)} == {b"connect", b"sendto"}
    server.close()


def test_a_deep_state_dir_runs_jobs_and_replaces_in_place(master_factory, tmp_path):
    state = deep(tmp_path, 200)
    assert len(os.fsencode(StatePaths(state).control_socket)) > SUN_PATH_MAX
    master = master_factory(state=state)
    master.submit(SLEEP, {"s": 0.3}, key="first")
    assert master.wait_jobs_done(["first"])["first"]["state"] == "finished"
    status = master.status()
    assert status["master"]["pid"] == master.pid and status["master"]["state"] == "running"

    # In place: the new image inherits the sockets; the child's final message
    # connects afresh, by the long path, after the exec.
    master.submit(SLEEP, {"s": 2.5}, key="across")
    wait_for(lambda: master.jobs()["across"]["state"] == "running", what="the job to run")
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2")
    master.submit(SLEEP, {"s": 0.3}, key="after")
    jobs = master.wait_jobs_done(["across", "after"])
    assert [jobs[k]["state"] for k in ("across", "after")] == ["finished", "finished"]
    assert jobs["across"]["attempt"] == 1
    assert " kill " not in master.log()

    stopped = phoenix_cli("stop", state_dir=state)
    assert stopped.returncode == 0, stopped.stderr
    assert master.wait_exit() == 0
    assert not (state / "control.sock").exists()


def test_a_deep_state_dir_hands_over_in_fork_mode(master_factory, tmp_path):
    state = deep(tmp_path, 200)
    master = master_factory("--reexec", "fork", state=state)
    old = master.pid
    master.submit(SLEEP, {"s": 2.5}, key="across")
    wait_for(lambda: master.jobs()["across"]["state"] == "running", what="the job to run")
    master.signal(signal.SIGUSR2)
    assert master.wait_exit() == 0  # the old master leaves once the new one is ready
    new = read_pid(StatePaths(state).pidfile)
    assert new not in (None, old)
    try:
        jobs = master.wait_jobs_done(["across"])
        assert jobs["across"]["state"] == "finished" and jobs["across"]["attempt"] == 1, jobs["across"]
        assert master.status()["master"]["pid"] == new
    finally:
        stopped = phoenix_cli("stop", state_dir=state)
    assert stopped.returncode == 0, stopped.stderr


def test_submit_to_a_deep_state_dir_without_a_master_records_the_job(tmp_path):
    state = deep(tmp_path, 200)
    result = phoenix_cli("submit", SLEEP, json.dumps({"s": 1}), state_dir=state)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["created"] is True


def test_a_state_dir_too_long_for_the_journal_is_refused_before_anything(tmp_path):
    state = deep(tmp_path / "top", 600)
    for command in (["submit", SLEEP, "{}"], ["start", "tests.apps.jobs:app"]):
        result = phoenix_cli(*command, state_dir=state)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("phoenix: error: "), result.stderr
        assert "choose a shorter --state-dir" in lines[0]
        assert not (tmp_path / "top").exists()  # no state directory, so no journal and no job


def test_a_short_symlink_to_a_too_deep_directory_is_refused(tmp_path):
    """The limit is on the real path: a short symlink to a deep directory is
    no way around it, and is refused the same way (nothing recorded there)."""
    target = deep(tmp_path / "real", 520)
    target.mkdir(parents=True)
    link = tmp_path / "short"
    link.symlink_to(target)
    result = phoenix_cli("submit", SLEEP, "{}", state_dir=link)
    assert result.returncode == 2 and "choose a shorter --state-dir" in result.stderr, result.stderr
    assert list(target.iterdir()) == []  # no journal, no job
