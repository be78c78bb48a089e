"""The master gone (SIGKILL, or `phoenix stop --leave-running`) while jobs
run: the children carry on, one that finishes meanwhile leaves its outcome in
the outbox, and the next `phoenix start` adopts the live ones, ingests the
outbox and re-runs only the attempts whose process vanished. No job body runs
twice, and never two attempts of one job at once."""

from __future__ import annotations

import os
import signal

import pytest

from phoenix.linux.paths import StatePaths
from tests.apps.replace_tools import APP, SLOW, UNTIL, alive, live, runs, stat_fields
from tests.conftest import phoenix_cli, wait_for


def _gone(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


@pytest.mark.parametrize("how", ["sigkill", "leave_running"])
def test_a_new_master_adopts_what_the_old_one_left_running(master_factory, state_dir, tmp_path, how):
    paths = StatePaths(state_dir)
    runs_file = tmp_path / "runs.jsonl"
    env = {"PHOENIX_TEST_RUNS": str(runs_file)}
    first = master_factory(app=APP, env=env)
    paths_of = {key: tmp_path / key for key in ("survivor", "finisher", "victim")}
    for key, path in paths_of.items():
        first.submit(UNTIL, {"path": str(path)}, key=key)
    jobs = wait_for(lambda: (j := first.jobs()) and all(j[k]["pid"] for k in paths_of) and j,
                    timeout=SLOW, what="three jobs to run")
    pids = {key: jobs[key]["pid"] for key in paths_of}
    ids = {key: jobs[key]["id"] for key in paths_of}

    if how == "sigkill":
        first.signal(signal.SIGKILL)
        assert first.wait_exit(SLOW) == -signal.SIGKILL
    else:
        result = phoenix_cli("stop", "--leave-running", state_dir=state_dir)
        assert result.returncode == 0, result.stderr
        assert first.wait_exit(SLOW) == 0
    assert all(alive(pid) for pid in pids.values())  # nobody took the children down

    # With no master: one job finishes (its outcome goes to the outbox), one process vanishes.
    paths_of["finisher"].touch()
    outbox = paths.outbox / f"{ids['finisher']}.1.json"
    wait_for(outbox.exists, timeout=SLOW, what="the finisher's outcome in the outbox")
    wait_for(lambda: _gone(pids["finisher"]), timeout=SLOW, what="the finisher to exit without a master")
    os.kill(pids["victim"], signal.SIGKILL)
    wait_for(lambda: _gone(pids["victim"]), timeout=SLOW, what="the victim to vanish")
    paths_of["victim"].touch()  # its re-run, when it comes, finishes at once
    assert alive(pids["survivor"])

    second = master_factory(app=APP, env=env, start=False).start(wait_ready=False)  # same log file, appended
    log = second.wait_log("ready generation=2", timeout=SLOW)
    assert f"adopt pid={pids['survivor']} job=survivor attempt=1 how=pidfd" in log
    jobs = second.wait_jobs_done(["finisher", "victim"], timeout=SLOW)
    assert jobs["finisher"]["state"] == "finished" and jobs["finisher"]["attempt"] == 1
    assert jobs["finisher"]["result"] == {"pid": pids["finisher"], "attempt": 1}  # from the outbox
    assert not outbox.exists()
    assert jobs["victim"]["state"] == "finished" and jobs["victim"]["attempt"] == 2  # re-run: its process was gone
    status = live(state_dir)
    survivor = status["running"][str(ids["survivor"])]
    assert survivor["pid"] == pids["survivor"] and survivor["attempt"] == 1 and survivor["adopted"]

    paths_of["survivor"].touch()
    jobs = second.wait_jobs_done(["survivor"], timeout=SLOW)
    assert jobs["survivor"]["state"] == "finished" and jobs["survivor"]["attempt"] == 1
    assert jobs["survivor"]["result"] == {"pid": pids["survivor"], "attempt": 1}
    wait_for(lambda: len(second.callbacks()) == 3, timeout=SLOW, what="three callbacks")
    assert sorted((c["key"], c["attempt"]) for c in second.callbacks()) == [
        ("finisher", 1), ("survivor", 1), ("victim", 2)]

    started = [(r["key"], r["attempt"]) for r in runs(runs_file)]
    assert sorted(started) == [("finisher", 1), ("survivor", 1), ("victim", 1), ("victim", 2)]
    assert " kill " not in second.log()
    assert "outcome=lost" in second.log()  # the victim, recorded as lost, then re-run


def test_an_outcome_acknowledged_by_a_master_that_died_is_recorded_by_the_next_one(master_factory, state_dir):
    """The master holds a final message in the journal before it acknowledges
    it, and the child (acknowledged) writes no outbox file. If that master dies
    before it records the outcome, the next one records it from the journal:
    the finished job is not run again."""
    from phoenix.store.sqlite import Journal
    from phoenix.wire import heartbeat as protocol

    state_dir.mkdir(mode=0o700)
    journal = Journal(state_dir / "journal.db")
    job_id, _ = journal.submit("tests.apps.jobs:noop", '{"n": 1}', "acked")
    (job,) = journal.pending(1)
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)  # a pid whose process is gone: the child exited after its ack
    attempt_id = journal.begin_attempt(job, 1, gone, 1)
    final = protocol.encode(job_id, 1, "finished", 7, 0, result={"from": "the acknowledged final"})
    journal.hold_finals([(attempt_id, final.decode())])
    journal.close()

    master = master_factory()
    row = master.wait_jobs_done(["acked"], timeout=SLOW)["acked"]
    assert (row["state"], row["attempt"], row["outcome"]) == ("finished", 1, "finished")
    assert row["result"] == {"from": "the acknowledged final"}
