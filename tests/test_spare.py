"""The spare child: one child forked ahead of need (by the fork server),
waiting for its order.

A job that finds a free slot runs in it; a spare killed from outside is
replaced; a replacement (USR2) and a stop end it; a master killed outright
leaves it to exit by itself."""

import os
import signal

from phoenix.linux import procfs
from tests.apps.replace_tools import zombies_of
from tests.conftest import wait_for

SPARE_TITLE = b"phoenix: spare child, waiting for a job"


def spares_of(master_pid: int) -> list[int]:
    """Spare children under the master: its own, or its fork server's."""
    found = []
    for pid, _parent in procfs.descendants(master_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(SPARE_TITLE):
                    found.append(pid)
        except OSError:
            pass
    return found


def one_spare(master_pid: int) -> int:
    wait_for(lambda: len(spares_of(master_pid)) == 1, what="one spare child under the master")
    return spares_of(master_pid)[0]


def test_a_job_runs_in_the_spare_and_a_new_one_is_forked(master_factory):
    master = master_factory("--workers", "2")
    spares = wait_for(lambda: len(found := spares_of(master.pid)) == 2 and found, what="two spares (two slots)")
    status = master.live()["master"]
    assert status["spare_pid"] in spares
    assert {procfs.parent_pid(pid) for pid in spares} == {status["fork_server_pid"]}, "not the fork server's"
    master.submit("tests.apps.jobs:sleep", {"s": 0.1}, key="in-the-spare")
    wait_for(lambda: master.jobs()["in-the-spare"]["state"] == "finished", what="the job to finish")
    assert master.jobs()["in-the-spare"]["result"]["pid"] == status["spare_pid"], "the job did not run in the spare"
    wait_for(lambda: len(now := spares_of(master.pid)) == 2 and status["spare_pid"] not in now, what="a new spare")


def test_a_spare_killed_from_outside_is_replaced(master_factory):
    master = master_factory("--workers", "1")
    spare = one_spare(master.pid)
    os.kill(spare, signal.SIGKILL)  # ours (the fork server's child, started by this test's master), by pid
    wait_for(lambda: spares_of(master.pid) not in ([], [spare]), what="the spare child to be replaced")
    assert f"spare_died pid={spare} how=SIGKILL" in master.log()
    assert not zombies_of(master.pid) and not zombies_of(master.live()["master"]["fork_server_pid"])
    master.submit("tests.apps.jobs:noop", {"x": 1}, key="after")
    wait_for(lambda: master.jobs()["after"]["state"] == "finished", what="a job after the spare was killed")
    assert " kill pid=" not in master.log()  # the master killed nothing


def test_replacement_and_stop_end_the_spare(master_factory):
    master = master_factory("--workers", "1")
    old = one_spare(master.pid)
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2", what="the new image to be ready")
    new = one_spare(master.pid)
    wait_for(lambda: not procfs.is_same_process(old, None), what="the old image's spare child to exit")
    assert new != old
    wait_for(lambda: not zombies_of(master.pid), what="the old spare to be reaped")
    master.stop()
    wait_for(lambda: not procfs.is_same_process(new, None), what="the spare to exit with its master")


def test_a_spare_exits_when_its_master_is_killed(master_factory):
    master = master_factory("--workers", "1")
    spare = one_spare(master.pid)
    master.signal(signal.SIGKILL)
    master.wait_exit()
    wait_for(lambda: not procfs.is_same_process(spare, None), what="the orphaned spare child to exit")


def test_a_process_forked_by_a_callback_does_not_hold_the_spare_back(master_factory, tmp_path):
    # The forked process keeps a copy of the spare's order pipe: the spare must
    # read its order without waiting for EOF on that pipe.
    master = master_factory("--workers", "1", "--heartbeat-timeout", "3")
    pidfile = tmp_path / "forked.pid"
    master.submit("tests.apps.jobs:noop", {"callback_forks": 30, "pidfile": str(pidfile)}, key="forks")
    # (written, not only created: the callback's process writes the file after opening it)
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), what="the callback's process")
    forked = int(pidfile.read_text())
    try:
        master.submit("tests.apps.jobs:noop", {"x": 2}, key="next")
        wait_for(lambda: master.jobs()["next"]["state"] == "finished", what="the next job to finish")
        assert master.jobs()["next"]["attempt"] == 1
    finally:
        os.kill(forked, signal.SIGKILL)  # started by this test's callback, by pid
        wait_for(lambda: not procfs.is_same_process(forked, None), what="the callback's process to end")
