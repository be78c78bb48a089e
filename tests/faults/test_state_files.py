"""State files removed under a running master come back within seconds: the
heartbeat socket (else every new child is killed for a silence that is not
its own), the control socket (else status says "stopped" and stop cannot
reach the master), the pidfile and the lock file."""

from __future__ import annotations

import json

from phoenix.linux.pidfile import read_pid
from phoenix.store.sqlite import Journal
from phoenix.wire import control
from tests.conftest import phoenix_cli, wait_for
from tests.faults.conftest import log_lines

SLEEP = "tests.apps.jobs:sleep"  # the jobs app: heartbeat_timeout 1 s, interval 0.2 s
BACK_WITHIN = 5.0  # seconds: the master checks its state files once a second


def test_removed_heartbeat_socket_is_rebound_and_no_job_is_killed(master_factory, state_dir):
    # A heartbeat_timeout shorter than the once-a-second check: a child that
    # starts just after the socket goes is silent for longer than that.
    master = master_factory("--heartbeat-timeout", "0.8", "--heartbeat-interval", "0.2")
    master.submit(SLEEP, {"s": 3.0}, key="before")  # connected to the socket that goes
    wait_for(lambda: master.jobs()["before"]["state"] == "running", what="the first job to run")
    # Just after a check (it puts the pidfile back), so the next one is ~1 s away.
    (state_dir / "phoenix.pid").unlink()
    wait_for(lambda: (state_dir / "phoenix.pid").exists(), timeout=BACK_WITHIN, what="the pidfile to come back")
    (state_dir / "phoenix.sock").unlink()
    # Started while the path is missing: its beats find nothing there until the rebind.
    journal = Journal(state_dir / "journal.db")
    try:
        journal.submit(SLEEP, json.dumps({"s": 3.0}), "during")
    finally:
        journal.close()
    control.request(state_dir / "control.sock", {"cmd": "wake"})
    master.wait_log("socket_rebuilt", timeout=BACK_WITHIN)
    assert (state_dir / "phoenix.sock").is_socket()
    master.submit(SLEEP, {"s": 1.5}, key="after")
    jobs = master.wait_jobs_done(["before", "during", "after"])
    for key in ("before", "during", "after"):
        assert jobs[key]["state"] == "finished" and jobs[key]["attempt"] == 1, jobs[key]
    log = master.log()
    assert " kill " not in log
    assert log_lines(log, "socket_rebuilt", path=state_dir / "phoenix.sock", found="missing")


def test_removed_control_socket_comes_back_so_status_and_stop_work(master_factory, state_dir):
    master = master_factory()
    (state_dir / "control.sock").unlink()

    def status() -> dict | None:
        result = phoenix_cli("status", "--json", state_dir=state_dir)
        return json.loads(result.stdout) if result.returncode == 0 else None

    assert wait_for(status, timeout=BACK_WITHIN, what="status to reach the master")["master"]["pid"] == master.pid
    master.wait_log("socket_rebuilt")
    stopped = phoenix_cli("stop", state_dir=state_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert master.wait_exit() == 0


def test_removed_pidfile_comes_back(master_factory, state_dir):
    master = master_factory()
    (state_dir / "phoenix.pid").unlink()
    wait_for(lambda: read_pid(state_dir / "phoenix.pid") == master.pid, timeout=BACK_WITHIN,
             what="the pidfile to come back")
    assert "pidfile_rebuilt" in master.log()


def test_removed_lock_file_comes_back_and_a_second_master_is_still_refused(master_factory, state_dir):
    master = master_factory()
    (state_dir / "phoenix.lock").unlink()
    master.wait_log("lockfile_rebuilt", timeout=BACK_WITHIN)
    second = master_factory(start=False)  # stopped by the fixture if it does run
    second.start(wait_ready=False)
    assert second.wait_exit() == 1
    assert "already running" in second.log()[second.log_offset:]
    assert read_pid(state_dir / "phoenix.pid") == master.pid
