"""The way out on a full disk: a stop, a drain or a reload while the journal
cannot be written never drops the outcomes the master or its children hold
(a finished job never runs again), the master never ends in a traceback, and
`phoenix stop` says how the master really ended."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.driver import phoenix_cli
from tests.faults.test_storage import fill

JOBS = [f"job-{i}" for i in range(4)]
APP = "tests.apps.gated:app"


def finish_on_a_full_disk(master_factory, small_filesystem: Path, notes: Path, delivery: float = 0.5):
    """A master whose 4 jobs finished (their finals reached it) while its
    journal could not be written; returns (master, filler). `delivery`: how
    long a child waits for its ack before it tries the outbox."""
    state = small_filesystem / "state"
    go = notes.with_name("go")
    master = master_factory(state=state, app=APP, env={"PHOENIX_OUTCOME_DELIVERY_TIMEOUT": str(delivery)})
    for i, key in enumerate(JOBS):
        master.submit("tests.apps.gated:gated", {"i": i, "notes": str(notes), "go": str(go)}, key=key)
    wait_for(lambda: _notes(notes).count("start 1") == 4, 20, "the 4 jobs to start")
    filler = fill(small_filesystem)
    go.touch()
    wait_for(lambda: _notes(notes).count("end 1") == 4, 15, "the 4 bodies to end")
    master.wait_log("journal_unwritable", timeout=15)
    # Their finals reach the master, which cannot hold them on disk (a count the status shows).
    wait_for(lambda: master.live()["master"].get("unrecorded_outcomes", 4) == 4, 15,
             "the master to have the 4 finals")
    return master, filler


def _notes(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def ran_once_each(master_factory, state: Path, notes: Path) -> None:
    """A new master finds every job finished on its first attempt: none runs again."""
    again = master_factory("--exit-when-done", state=state, app=APP)
    assert again.wait_exit() == 0, again.log()[-3000:]
    jobs = again.jobs()
    assert {k: (j["state"], j["attempt"]) for k, j in jobs.items()} == {k: ("finished", 1) for k in JOBS}
    assert _notes(notes).count("start") == 4, "a finished job ran again"


@pytest.mark.parametrize("how", ["stop", "drain"])
def test_a_stop_on_a_full_disk_keeps_every_outcome_and_says_so(master_factory, small_filesystem, tmp_path, how):
    """Before: the master exited 1 with a traceback, dropped the 4 outcomes
    (they ran again), and `phoenix stop` printed success."""
    notes = tmp_path / "notes"
    # The children wait 60 s for their acks: the master acks them as soon as it can write, not when they ask again.
    master, filler = finish_on_a_full_disk(master_factory, small_filesystem, notes, delivery=60)
    try:
        stopped = phoenix_cli("stop", "--timeout", "3", *(["--drain"] if how == "drain" else []),
                              state_dir=small_filesystem / "state")
        # Not a success while the outcomes are not on disk: it says why, and the master keeps them.
        assert stopped.returncode == 1, stopped.stdout + stopped.stderr
        assert "stopped master" not in stopped.stdout
        assert "cannot record 4" in stopped.stderr, stopped.stderr
        assert len(stopped.stderr.strip().splitlines()) == 1
        assert master.proc.poll() is None, master.log()[-3000:]
    finally:
        filler.unlink()
    # Space again: the master records them and ends the stop it was asked for.
    assert master.wait_exit(timeout=20) == 0, master.log()[-3000:]
    assert "Traceback" not in master.log()
    ran_once_each(master_factory, small_filesystem / "state", notes)


def test_a_job_blocked_in_checkpoint_by_a_full_disk_is_not_stall_killed(master_factory, small_filesystem, tmp_path):
    """FAULTS class 4: never charged an attempt for the master's shortage.
    Before: the job, blocked in checkpoint() while the master could not write
    its journal, made no progress and was killed (stall_timeout), a retry used."""
    started, done = tmp_path / "started", tmp_path / "done"
    master = master_factory(state=small_filesystem / "state", app="tests.apps.longjobs:app")
    master.submit("tests.apps.longjobs:saves_until", {"started": str(started), "done": str(done)}, key="saves")
    wait_for(started.exists, 20, "the job to start")
    filler = fill(small_filesystem)
    try:
        master.wait_log("journal_unwritable", timeout=15)
        # Three times its 1 s stall_timeout blocked on the master's journal (its beats go on): never killed.
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            assert "reason=stall_timeout" not in master.log(), master.log()[-3000:]
            time.sleep(0.1)
    finally:
        filler.unlink()
    done.touch()
    wait_for(lambda: master.jobs()["saves"]["state"] == "finished", 20, "the job to finish once its saves are taken")
    job = master.jobs()["saves"]
    assert job["attempt"] == 1 and job["result"]["saves"] > 0, job


def test_stop_reports_a_master_that_could_not_record_its_stop(master_factory, small_filesystem):
    """Nothing held, but the stop itself cannot be written: the master ends
    without a traceback, and `phoenix stop` does not call that a clean stop."""
    master = master_factory(state=small_filesystem / "state", app=APP)
    filler = fill(small_filesystem)
    try:
        stopped = phoenix_cli("stop", state_dir=small_filesystem / "state")
        assert stopped.returncode == 1, stopped.stdout + stopped.stderr
        assert "could not record" in stopped.stderr and "full" in stopped.stderr, stopped.stderr
        assert master.wait_exit() == 1
        assert "Traceback" not in master.log(), master.log()[-3000:]
    finally:
        filler.unlink()


def test_a_reload_on_a_full_disk_is_refused_and_keeps_every_outcome(master_factory, small_filesystem, tmp_path):
    """A new image would start without the outcomes this one holds in memory."""
    notes = tmp_path / "notes"
    master, filler = finish_on_a_full_disk(master_factory, small_filesystem, notes)
    try:
        reloaded = phoenix_cli("reload", "--wait", "--timeout", "20", state_dir=small_filesystem / "state")
        assert reloaded.returncode == 1, reloaded.stdout + reloaded.stderr
        assert "journal" in reloaded.stderr, reloaded.stderr
        assert master.proc.poll() is None
    finally:
        filler.unlink()
    master.wait_log("journal_recovered", timeout=15)
    master.stop()
    assert master.proc.returncode == 0, master.log()[-3000:]
    assert "Traceback" not in master.log()
    ran_once_each(master_factory, small_filesystem / "state", notes)


def test_children_keep_their_outcomes_through_a_master_killed_on_a_full_disk(master_factory, small_filesystem,
                                                                             tmp_path):
    """Neither the journal nor the outbox takes the outcomes, and the master
    is SIGKILLed: each child still holds its own and hands it to the next
    master. (Before: each child gave up after a failed outbox write, and the
    4 finished jobs ran again.)"""
    import signal

    notes = tmp_path / "notes"
    master, filler = finish_on_a_full_disk(master_factory, small_filesystem, notes)
    children = [int(line.split()[2]) for line in _notes(notes).splitlines() if line.startswith("end")]
    master.wait_log("cannot write outcome", count=4, what="each child to find the outbox full too")
    master.signal(signal.SIGKILL)
    master.wait_exit()
    filler.unlink()
    ran_once_each(master_factory, small_filesystem / "state", notes)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() and _running(pid) for pid in children), 15,
             "the children to exit once their outcomes are recorded")


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_start_on_a_full_disk_is_one_line_not_a_traceback(small_filesystem):
    """Before: a foreground `phoenix start` died in a traceback writing its
    pidfile (a supervisor restarting it printed one every second)."""
    state = small_filesystem / "state"
    state.mkdir(mode=0o700)
    filler = fill(small_filesystem)
    try:
        result = phoenix_cli("start", "tests.apps.jobs:app", "--exit-when-done", state_dir=state)
    finally:
        filler.unlink()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("phoenix: error: ") and "No space left on device" in lines[-1], result.stderr
