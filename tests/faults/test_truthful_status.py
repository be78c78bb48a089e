"""Answers tell the truth (issue 18, class 5): a master that is alive but
cannot answer is not "stopped", nor is one whose control socket is being put
back; a job that closed its own connection is not "silent"."""

from __future__ import annotations

import json
import os
import signal

import pytest

from phoenix.cli.status import collect
from tests.conftest import phoenix_cli, wait_for

APP = "tests.apps.exhausting:app"
TARGET = "tests.apps.exhausting"


def test_a_stopped_master_is_reported_alive_but_not_responding_with_exit_4(master_factory):
    master = master_factory(app=APP)
    master.signal(signal.SIGSTOP)  # a VM pause, as far as the master can tell
    try:
        shown = phoenix_cli("status", state_dir=master.state_dir)
        as_json = phoenix_cli("status", "--json", state_dir=master.state_dir)
    finally:
        master.signal(signal.SIGCONT)
    assert shown.returncode == 4, shown.stdout + shown.stderr
    assert f"master: not responding  pid {master.pid}  process state T (stopped)" in shown.stdout
    assert "holds the lock" in shown.stdout and f"kill -CONT {master.pid}" in shown.stdout
    assert as_json.returncode == 4
    reported = json.loads(as_json.stdout)["master"]
    assert reported["state"] == "not responding" and reported["pid"] == master.pid
    assert reported["process_state"] == "T"
    # Continued, it answers again.
    assert phoenix_cli("status", state_dir=master.state_dir).returncode == 0


def test_status_in_the_second_after_control_sock_is_removed_still_sees_the_master(master_factory):
    master = master_factory(app=APP)
    master.paths.control_socket.unlink()
    report, running = collect(master.paths)  # at once: before the master's next look at its state directory
    assert running, report["master"]
    assert report["master"]["state"] == "running" and report["master"]["pid"] == master.pid
    assert master.paths.control_socket.exists()  # put back meanwhile


def test_a_job_that_closed_its_connection_is_told_apart_from_a_silent_one(master_factory):
    master = master_factory(app=APP)
    master.submit(f"{TARGET}:close_all_fds", {}, key="closer")
    master.submit(f"{TARGET}:silent", {}, key="silent")
    jobs = master.wait_jobs_done(["closer", "silent"], timeout=30.0)
    closer, silent = jobs["closer"], jobs["silent"]
    assert closer["outcome"] == "killed" and closer["reason"] == "connection_closed", closer
    assert "closed its own connection" in closer["error"] and "close only the descriptors" in closer["error"]
    assert silent["outcome"] == "killed" and silent["reason"] == "heartbeat_timeout", silent
    log = master.log()
    assert "reason=connection_closed" in log and "reason=heartbeat_timeout" in log
    assert master.proc is not None and master.proc.poll() is None
    os.kill(master.pid, 0)
    wait_for(lambda: not master.live()["running"], 10.0, "both attempts to end")


def test_an_outcome_acked_after_its_child_wrote_the_outbox_leaves_no_outbox_file(master_factory, tmp_path):
    """The master frozen past outcome_delivery_timeout: the child writes its
    outcome to the outbox and exits; the master, continued, reads the same
    final from its socket. The file must go with the outcome's record, or a
    later attempt with the same job id and number reads it as its own (an
    outside check: a SIGKILLed job was recorded finished, with a pruned
    job's result)."""
    master = master_factory("--workers", "1", env={"PHOENIX_OUTCOME_DELIVERY_TIMEOUT": "0.3"})
    release = tmp_path / "release"  # (it must end while the master is stopped, however loaded the machine)
    master.submit("tests.apps.jobs:sleep", {"s": 60, "until": str(release)}, key="acked-late")
    child = wait_for(lambda: (j := master.jobs().get("acked-late")) and j["pid"], 15, "the job to run")
    master.signal(signal.SIGSTOP)
    release.touch()
    try:
        wait_for(lambda: list(master.paths.outbox.iterdir()), 15, "the child to write its outbox file")
        wait_for(lambda: not os.path.exists(f"/proc/{child}/cmdline") or
                 open(f"/proc/{child}/stat").read().rpartition(")")[2].split()[0] == "Z", 15, "the child to exit")
    finally:
        master.signal(signal.SIGCONT)
    wait_for(lambda: phoenix_cli("show", "acked-late", "--json", state_dir=master.state_dir).stdout.count(
        '"state": "finished"'), 15, "the outcome to be recorded")
    assert list(master.paths.outbox.iterdir()) == []


@pytest.mark.parametrize("fifo_at", ["final", "checkpoint"])
def test_a_fifo_or_a_huge_file_a_job_leaves_in_the_outbox_neither_blocks_nor_feeds_the_master(master_factory,
                                                                                               fifo_at):
    """An outside check: a FIFO at a job's outbox path blocked the master in
    open() for good; a 3 GB file there was read whole (the master OOM-killed
    at every start). Neither is read now: the end is recorded as the exit
    status says, each file is put aside in a quarantine note and removed."""
    master = master_factory(app=APP)
    master.submit(f"{TARGET}:plant_in_outbox", {"outbox": str(master.paths.outbox), "fifo_at": fifo_at},
                  key="planted")
    shown = wait_for(lambda: (r := json.loads(phoenix_cli("show", "planted", "--json",
                                                            state_dir=master.state_dir).stdout))["state"] == "failed"
                     and r, 15, "the job's end to be recorded")
    assert (shown["attempt_list"][0]["outcome"], shown["attempt_list"][0]["reason"]) == ("exited", "exit code 3")
    assert list(master.paths.outbox.iterdir()) == []
    notes = phoenix_cli("quarantine", "--json", state_dir=master.state_dir).stdout
    assert notes.count("not a regular file") == 1 and notes.count("more than any message") == 1, notes
    assert phoenix_cli("status", state_dir=master.state_dir).returncode == 0


def test_a_socket_or_a_directory_in_the_outbox_is_no_outage_and_no_crash_loop(master_factory):
    """An outside check: a socket at the checkpoint path raised ENXIO, taken
    for a journal outage (no job started again, a restart crashed on it each
    time); a directory at the outcome path failed its unlink, the same."""
    master = master_factory(app=APP)
    master.submit(f"{TARGET}:plant_socket_and_directory", {"outbox": str(master.paths.outbox)}, key="planted")
    wait_for(lambda: json.loads(phoenix_cli("show", "planted", "--json", state_dir=master.state_dir).stdout)
             ["state"] == "failed", 15, "the job's end to be recorded")
    master.submit(f"{TARGET}:work", {}, key="after")  # jobs still start
    master.wait_jobs_done(["after"], timeout=15)
    assert "journal_unwritable" not in master.log() and "outbox_left" not in master.log()
    assert list(master.paths.outbox.iterdir()) == []  # the empty directory went too
