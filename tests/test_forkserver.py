"""The fork server: the master never forks job children itself; a small
server forked at start-up does, reports each pid before the job runs and
forwards each exit. It is replaced on USR2 and USR1 and ended on stop; if it
dies, its children become the master's (a subreaper) and a new one starts,
with no job lost or run twice. An app that starts threads at import keeps
spawns in the master, with a warning that says why."""

import os
import signal
import sys

import pytest

from phoenix.linux import procfs
from tests.apps.replace_tools import zombies_of
from tests.conftest import wait_for


def server_of(master, other_than: int | None = None) -> int:
    return wait_for(lambda: (pid := master.live()["master"]["fork_server_pid"]) not in (None, other_than) and pid,
                    what="a fork server")


def ready_server_of(master) -> int:
    """The fork server, once it has imported the app and forked the spare.
    Until then a job's child comes from the master itself (a job does not
    wait for the app's import), which is slow to happen on a loaded machine."""
    def ready():
        m = master.live()["master"]
        server, spare = m["fork_server_pid"], m["spare_pid"]
        return server and spare and procfs.parent_pid(spare) == server and server
    return wait_for(ready, what="a ready fork server with its spare")


def running_pids(master, ids: dict[str, int]) -> dict[str, int]:
    """The pid of each job (key -> id), once all of them run. Their jobs must
    run until the test releases them (`until`): a job of a fixed few seconds
    can end, on a loaded machine, before the last one starts, and then all
    of them never run at once."""
    def pids():
        running = master.live()["running"]
        return all(str(i) in running for i in ids.values()) and {k: running[str(i)]["pid"] for k, i in ids.items()}
    return wait_for(pids, what=f"jobs {sorted(ids)} to run")


def test_job_children_are_the_fork_servers_not_the_masters(master_factory, tmp_path):
    master = master_factory("--workers", "2")
    release = tmp_path / "release"
    server = ready_server_of(master)
    assert procfs.parent_pid(server) == master.pid
    assert master.status()["master"]["fork_server_pid"] == server  # what an operator sees
    pid = running_pids(master, {"one": master.submit("tests.apps.jobs:sleep", {"s": 60, "until": str(release)},
                                                     key="one")})["one"]
    assert procfs.parent_pid(pid) == server, "the job's child was not forked by the fork server"
    assert procfs.process_group(pid) == pid
    release.touch()
    wait_for(lambda: master.jobs()["one"]["state"] == "finished", what="the job to finish")
    assert master.jobs()["one"]["result"]["pid"] == pid
    assert not zombies_of(server)


def test_a_killed_fork_server_loses_no_job_and_runs_none_twice(master_factory, tmp_path):
    master = master_factory("--workers", "3")
    server = server_of(master)
    lockdir = tmp_path / "locks"
    lockdir.mkdir()
    keys = [f"k{i}" for i in range(3)]
    release = tmp_path / "release"
    pids = running_pids(master, {key: master.submit("tests.apps.jobs:exclusive_sleep",
                                                    {"s": 60, "until": str(release), "lockdir": str(lockdir)}, key=key)
                                 for key in keys})
    os.kill(server, signal.SIGKILL)  # the fork server this test's master started, by pid
    master.wait_log(f"fork_server_died pid={server} how=SIGKILL", what="the master to notice")
    # Its children were reparented to the master, which now reaps them itself.
    for pid in pids.values():
        assert procfs.parent_pid(pid) in (master.pid, None)
    new = server_of(master, other_than=server)
    assert procfs.parent_pid(new) == master.pid
    release.touch()
    wait_for(lambda: all(master.jobs()[k]["state"] == "finished" for k in keys), what="the jobs to finish")
    for key in keys:
        assert master.jobs()[key]["attempt"] == 1, f"{key} ran again"
    assert not (lockdir / "VIOLATIONS").exists()
    master.submit("tests.apps.jobs:sleep", {"s": 0.1}, key="after")
    wait_for(lambda: master.jobs()["after"]["state"] == "finished", what="a job through the new server")
    assert procfs.parent_pid(master.jobs()["after"]["result"]["pid"]) in (new, None)
    assert " kill pid=" not in master.log()
    wait_for(lambda: not zombies_of(master.pid), what="every exit to be reaped")


def test_an_exit_the_dead_server_never_reaped_reaches_the_master(master_factory, tmp_path):
    # The server is stopped while its child exits (a zombie it cannot reap),
    # then killed: the zombie is reparented to the master and reaped there.
    master = master_factory("--workers", "1")
    server = ready_server_of(master)
    release = tmp_path / "release"
    pid = running_pids(master, {"z": master.submit("tests.apps.jobs:sleep", {"s": 60, "until": str(release)},
                                                   key="z")})["z"]
    os.kill(server, signal.SIGSTOP)
    assert procfs.parent_pid(pid) == server, "the job ran in a child the master forked, not the server"
    release.touch()
    try:
        wait_for(lambda: procfs.state(pid) == "Z", what="the job's child to exit unreaped")
    finally:
        os.kill(server, signal.SIGKILL)
    wait_for(lambda: master.jobs()["z"]["state"] == "finished", what="the job's outcome")
    assert master.jobs()["z"]["attempt"] == 1


def test_usr2_usr1_and_stop_replace_and_end_the_fork_server(master_factory, tmp_path):
    master = master_factory("--workers", "2")
    first = server_of(master)
    release = tmp_path / "release"
    running_pids(master, {"across": master.submit("tests.apps.jobs:sleep", {"s": 60, "until": str(release)},
                                                  key="across")})
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2", what="the new image")
    wait_for(lambda: not procfs.is_same_process(first, None), what="the old image's fork server to exit")
    second = server_of(master, other_than=first)
    master.signal(signal.SIGUSR1)
    master.wait_log("logs_reopened", what="the logs to be reopened")
    third = server_of(master, other_than=second)
    assert not procfs.is_same_process(second, None)
    release.touch()
    wait_for(lambda: master.jobs()["across"]["state"] == "finished", what="the job across USR2 and USR1")
    assert master.jobs()["across"]["attempt"] == 1
    master.stop()
    assert not procfs.is_same_process(third, None)


def test_an_app_that_starts_threads_at_import_keeps_spawns_in_the_master(master_factory):
    master = master_factory("--workers", "1", app="tests.apps.threaded:app")
    log = master.log()
    assert "fork_server_off" in log and "the app started 1 thread(s) at import (cache-refresher)" in log
    assert master.live()["master"]["fork_server_pid"] is None
    master.submit("tests.apps.threaded:parent", {}, key="p")
    wait_for(lambda: master.jobs()["p"]["state"] == "finished", what="the job")
    assert master.jobs()["p"]["result"] == {"ppid": master.pid}


def test_a_job_that_signals_its_parent_does_not_take_the_server_down(master_factory):
    # A job written for a Phoenix without a fork server may signal its parent
    # to reach its master: the server blocks such signals.
    master = master_factory(app="tests.apps.takeover:app")
    server = ready_server_of(master)
    master.submit("tests.apps.takeover:signal_parent", {"signal": "SIGTERM"}, key="p")
    wait_for(lambda: master.jobs()["p"]["state"] == "finished", what="the job")
    assert master.jobs()["p"]["result"]["parent"] == server
    assert procfs.is_same_process(server, None) and master.live()["master"]["fork_server_pid"] == server
    assert "fork_server_died" not in master.log()


@pytest.mark.parametrize("failure, said", [
    ("raise", "fork server could not import the app: AppError"),
    ("kill", "fork server died while importing the app (SIGKILL)"),
])
def test_a_server_that_cannot_import_the_app_leaves_spawns_in_the_master_once_and_for_all(master_factory, failure,
                                                                                          said):
    # The server is a fresh interpreter that imports the app itself: where
    # that import fails there (and only there), by an exception or by killing
    # the interpreter, the master forks its children, without starting a
    # server again and again.
    master = master_factory("--workers", "1", app="tests.apps.server_only_failure:app",
                            env={"TEST_SERVER_FAILURE": failure})
    for key in ("a", "b"):
        master.submit("tests.apps.server_only_failure:parent", {}, key=key)
        wait_for(lambda key=key: master.jobs()[key]["state"] == "finished", what=f"job {key}")
        assert master.jobs()[key]["result"] == {"ppid": master.pid}
    log = master.log()
    assert log.count("fork_server_off") == 1 and said in log, log
    assert log.count(" fork_server ") == 1, "the server was started again after it failed"
    assert master.live()["master"]["fork_server_pid"] is None


def test_a_job_child_carries_no_at_fork_hook_its_app_did_not_import(master_factory):
    # Every fork runs the at-fork hooks of the modules in the forking process
    # (threading's, logging's, random's: Python code that copies ~150 pages
    # per child). The master has them all; the server, a fresh interpreter
    # with only the app and the child's code, has none the app did not bring.
    master = master_factory()
    ready_server_of(master)
    master.submit("tests.apps.jobs:loaded_modules", {"names": ["threading", "logging", "random", "sqlite3"]}, key="m")
    wait_for(lambda: master.jobs()["m"]["state"] == "finished", what="the job")
    assert master.jobs()["m"]["result"] == []


def test_a_jobs_log_records_go_to_the_masters_log_even_if_the_app_never_imported_logging(master_factory):
    # The server configures logging as the master did, also when a job is the
    # first to import it (the app did not: its children carry no logging hook).
    master = master_factory()
    master.submit("tests.apps.jobs:logs_a_line", {"who": "w1"}, key="w1")
    log = master.wait_log("a record from job w1", timeout=10, what="the job's record in the master's log")
    line = next(line for line in log.splitlines() if "a record from job w1" in line)
    assert " INFO " in line and line.startswith("20"), line  # stamped and levelled like the master's own lines


def test_the_fork_server_runs_with_the_masters_interpreter_flags(master_factory):
    # A fresh interpreter would otherwise drop `python -O` or `-X dev`: job code
    # would run with asserts the master's operator turned off.
    master = master_factory(launcher=(sys.executable, "-O", "-X", "dev", "-m", "phoenix"))
    ready_server_of(master)
    master.submit("tests.apps.jobs:interpreter_flags", {}, key="flags")
    wait_for(lambda: master.jobs()["flags"]["state"] == "finished", what="the job")
    assert master.jobs()["flags"]["result"] == {"optimize": 1, "dev_mode": True}


def test_signal_handlers_the_app_installs_at_import_do_not_reach_its_job_children(master_factory):
    # The server imports the app after resetting its handlers, then resets
    # them again: a job child keeps the server's table.
    master = master_factory(app="tests.apps.handlers_at_import:app")
    ready_server_of(master)
    master.submit("tests.apps.handlers_at_import:handlers", {}, key="h")
    master.submit("tests.apps.handlers_at_import:exits", {"code": 3}, key="x")
    wait_for(lambda: master.jobs()["h"]["state"] == "finished", what="the handlers job")
    assert master.jobs()["h"]["result"] == {"SIGTERM": True, "SIGCHLD": True}
    # With SIGCHLD ignored the server's children were reaped by the kernel and
    # their exits never reported: this job stayed running for good.
    wait_for(lambda: master.jobs()["x"]["state"] == "failed", timeout=10, what="the exit to be recorded")


def test_a_job_does_not_wait_for_a_server_still_importing_the_app(master_factory):
    # The master's loop must not stop for the server's import: a job that
    # comes meanwhile gets a child forked by the master; once the server is
    # ready, children are its own again.
    master = master_factory("--workers", "1", app="tests.apps.slow_server_import:app",
                            env={"TEST_SERVER_IMPORT_SECONDS": "3"})
    server = server_of(master)
    master.submit("tests.apps.slow_server_import:parent", {}, key="early")
    wait_for(lambda: master.jobs()["early"]["state"] == "finished", timeout=2.5, what="the job, before the import ends")
    assert master.jobs()["early"]["result"] == {"ppid": master.pid}
    wait_for(lambda: procfs.parent_pid(master.live()["master"]["spare_pid"] or 0) == server, timeout=15,
             what="a spare from the ready server")
    master.submit("tests.apps.slow_server_import:parent", {}, key="late")
    wait_for(lambda: master.jobs()["late"]["state"] == "finished", what="the job from the server")
    assert master.jobs()["late"]["result"] == {"ppid": server}
    assert "fork_server_slow" not in master.log()
