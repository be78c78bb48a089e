"""Jobs cannot take over their master: a stop or reload signal sent by a
job's own process (or by a daemon it left outside its process group) is
logged with its sender and ignored, while the same signal from an operator
still works; and what a job daemonised (setsid, double fork) ends with its
attempt, leaving neither a process nor a zombie."""

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from phoenix.linux import procfs
from phoenix.store.sqlite import Journal
from tests.conftest import wait_for
from tests.faults.conftest import log_lines
from tests.faults.helpers import wake

APP = "tests.apps.takeover:app"


def submit(master, target, params, key):
    journal = Journal(master.state_dir / "journal.db")
    try:
        journal.submit(f"tests.apps.takeover:{target}", json.dumps(params), key)
    finally:
        journal.close()
    wake(master)


def done(master, key):
    return master.wait_jobs_done([key], timeout=20)[key]


def gone(pid: int, start_time: int | None) -> bool:
    return not procfs.is_same_process(pid, start_time)


def zombie_children(parent: int) -> list[int]:
    zombies = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        fields = procfs.stat_fields(int(entry))
        if fields and fields[0] == "Z" and int(fields[1]) == parent:
            zombies.append(int(entry))
    return zombies


@pytest.mark.parametrize("sender", ["job", "daemon"])
def test_job_cannot_stop_its_master_but_an_operator_can(master_factory, tmp_path, sender):
    master = master_factory(app=APP)
    target = "signal_master" if sender == "job" else "daemon_signals_master"
    pidfile = tmp_path / "daemon.pid"
    release = tmp_path / "release"
    submit(master, target, {"signal": "SIGTERM", "pidfile": str(pidfile), "release": str(release)}, "rebel")
    ignored = master.wait_log("signal_ignored")
    release.touch()  # a daemon that has exited, been reaped and left no trace is obeyed (docs/failure-modes.md)
    job = done(master, "rebel")
    assert job["outcome"] == "finished", job
    sender_pid = job["result"]["pid"] if sender == "job" else int(pidfile.read_text().split()[0])
    lines = log_lines(ignored, "signal_ignored", signal="SIGTERM", sender=sender_pid, job="rebel")
    assert lines, ignored[-2000:]
    assert master.proc.poll() is None
    assert not log_lines(master.log(), "stop"), "the master began to stop"
    # It still runs jobs ...
    submit(master, "noop", {"after": True}, "after")
    assert done(master, "after")["outcome"] == "finished"
    # ... and an operator's TERM still stops it.
    master.signal(signal.SIGTERM)
    assert master.wait_exit() == 0
    assert log_lines(master.log(), "stop", mode="term")


def test_job_cannot_replace_its_master(master_factory):
    master = master_factory(app=APP)
    submit(master, "signal_master", {"signal": "SIGUSR2"}, "reloader")
    job = done(master, "reloader")
    assert job["outcome"] == "finished", job
    log = master.wait_log("signal_ignored")
    assert log_lines(log, "signal_ignored", signal="SIGUSR2", sender=job["result"]["pid"], job="reloader")
    assert not log_lines(log, "reload"), "the job's USR2 started a replacement"
    assert master.status()["master"]["generation"] == 1


@pytest.mark.parametrize("how", ["finishes", "is_killed"])
def test_daemonised_grandchild_ends_with_its_attempt(master_factory, tmp_path, how):
    master = master_factory(app=APP)
    pidfile = tmp_path / "daemon.pid"
    if how == "finishes":
        submit(master, "daemonise", {"pidfile": str(pidfile)}, "daemoniser")
    else:  # killed for max_runtime; its daemon ignores the TERM the master sends
        submit(master, "daemonise_then_hang", {"pidfile": str(pidfile), "ignore_term": True}, "daemoniser")
    daemon, daemon_start = map(int, wait_for(lambda: pidfile.exists() and pidfile.read_text(), 15,
                                             "the daemon to start").split())
    job = done(master, "daemoniser")
    assert job["outcome"] == ("finished" if how == "finishes" else "killed"), job
    wait_for(lambda: gone(daemon, daemon_start), 10, "the job's daemon to end")
    wait_for(lambda: not zombie_children(master.pid), 10, "the master to reap every orphan")
    assert master.proc.poll() is None


def test_signals_glibc_keeps_for_itself_are_not_left_ignored_by_a_posix_spawned_master(tmp_path):
    # glibc's posix_spawn (Python 3.13's subprocess uses it) leaves signals 32
    # and 33 ignored in the program it starts; sigaction cannot reset them, so
    # a master started that way handed SIG_IGN on to every job (the fork
    # server and any child the master forks reset handlers through this).
    out = tmp_path / "sigign"
    code = ("from phoenix.child.run import reset_signal_handlers\n"
            "def ignored():\n"
            "    return [line.split()[1] for line in open('/proc/self/status') if line.startswith('SigIgn')][0]\n"
            "before = ignored()\n"
            "reset_signal_handlers()\n"
            f"open({str(out)!r}, 'w').write(before + ' ' + ignored())\n")
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", code], os.environ)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    before, after = (int(mask, 16) for mask in out.read_text().split())
    reserved = sum(1 << (signum - 1) for signum in range(32, signal.SIGRTMIN))
    if before & reserved != reserved:
        pytest.skip("this libc's posix_spawn leaves its reserved signals alone")
    assert after == 1 << (signal.SIGPIPE - 1)  # SIGPIPE only, as Python sets it at start-up


def test_a_job_runs_with_no_signal_blocked(master_factory):
    # The master keeps its handled signals blocked for good (its signalfd reads
    # them); a child must not inherit that mask, nor any ignored signal but
    # SIGPIPE (as Python sets it at start-up).
    master = master_factory(app=APP)
    submit(master, "signal_state", {}, "mask")
    job = done(master, "mask")
    assert job["result"] == {"SigBlk": "0" * 16, "SigIgn": f"{1 << (signal.SIGPIPE - 1):016x}"}, job
    masks = dict(line.split(":\t", 1) for line in Path(f"/proc/{master.pid}/status").read_text().splitlines()
                 if line.startswith(("SigBlk", "SigIgn")))
    handled = sum(1 << (s - 1) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGCHLD))
    assert int(masks["SigBlk"], 16) & handled == handled  # ... while the master's stay blocked
    assert not int(masks["SigIgn"], 16) & (1 << (signal.SIGCHLD - 1))  # SIG_IGN on CHLD would survive exec
