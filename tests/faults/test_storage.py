"""Storage faults: the journal cannot be written (its file system is full),
or the state directory is removed, while jobs run. The master logs one clear error, does
not crash (so no crash loop), does not kill its children, and recovers every
job once the fault is cleared."""

import errno
import os
import shutil

from tests.conftest import wait_for


def fill(mountpoint):
    """Use up every free block. (A read-only remount would be the other way to
    refuse writes, but the kernel refuses it while the journal is open for
    writing; a full file system takes SQLite down the same failing-write path.)"""
    filler = mountpoint / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_unwritable_journal_keeps_children_and_recovers(master_factory, small_filesystem):
    state = small_filesystem / "state"
    master = master_factory(state=state)
    release = small_filesystem.parent / f"{small_filesystem.name}-release"  # (beside it: the disk fills)
    for i in range(3):  # all three end once the disk is full, however loaded the machine
        master.submit("tests.apps.jobs:sleep", {"s": 60, "i": i, "until": str(release)}, key=f"job-{i}")
    wait_for(lambda: master.jobs().get("job-2", {}).get("state") == "running", what="the last job to start")
    filler = fill(small_filesystem)
    release.touch()
    try:
        master.wait_log("journal_unwritable", timeout=15)
        # The jobs finish while nothing can be written; the master has their outcomes (and each child
        # keeps its own until the master can acknowledge it).
        wait_for(lambda: master.live()["master"]["unrecorded_outcomes"] == 3, timeout=15,
                 what="the children to finish")
        assert master.proc.poll() is None
    finally:
        filler.unlink()
    master.wait_log("journal_recovered", timeout=15)
    jobs = master.wait_jobs_done(timeout=15)
    assert {key: job["state"] for key, job in jobs.items()} == {f"job-{i}": "finished" for i in range(3)}
    assert all(job["attempt"] == 1 for job in jobs.values())
    log = master.log()
    assert log.count("journal_unwritable") == 1 and " kill pid=" not in log
    wait_for(lambda: len(master.callbacks()) == 3, what="one callback per job")
    assert sorted(c["key"] for c in master.callbacks()) == [f"job-{i}" for i in range(3)]
    # Works normally again, and a restart finds every job.
    master.submit("tests.apps.jobs:noop", {"after": True}, key="after")
    master.wait_jobs_done(["after"])
    master.stop()
    again = master_factory("--exit-when-done", state=state)
    assert again.wait_exit() == 0
    assert len(again.jobs()) == 4


def test_removed_state_dir_is_rebuilt_without_losing_jobs(master_factory, state_dir):
    master = master_factory()
    for i in range(2):
        master.submit("tests.apps.jobs:sleep", {"s": 2.0, "i": i}, key=f"job-{i}")
    master.submit("tests.apps.jobs:noop", {}, key="done-before")
    wait_for(lambda: len(master.jobs()) == 3 and master.jobs()["job-1"]["state"] == "running",
             what="the jobs to start")
    shutil.rmtree(state_dir)
    master.wait_log("state_dir_rebuilt", timeout=10)
    assert "state_dir_lost" in master.log()
    assert (state_dir / "phoenix.pid").read_text().strip() == str(master.pid)
    jobs = master.wait_jobs_done(timeout=20)
    assert {key: job["state"] for key, job in jobs.items()} == {"job-0": "finished", "job-1": "finished",
                                                               "done-before": "finished"}
    assert all(job["attempt"] == 1 for job in jobs.values())
    assert " kill pid=" not in master.log()
    master.submit("tests.apps.jobs:noop", {}, key="after")  # new submissions and new children work
    assert master.wait_jobs_done(["after"])["after"]["state"] == "finished"
