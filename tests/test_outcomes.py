"""Each way a child can end is detected and classified, with the detail in `error`."""

import os
import signal

import pytest

from tests.conftest import wait_for


def test_each_kind_of_failure_is_classified_differently(master_factory):
    master = master_factory()
    for target in ("stop_self", "segfault", "exit3", "raises", "wait_forever"):
        master.submit(f"tests.apps.jobs:{target}", {}, key=target)
    running = wait_for(lambda: (j := master.jobs().get("wait_forever")) and j["pid"], what="wait_forever to run")
    os.kill(running, signal.SIGKILL)  # from outside, not from Phoenix
    jobs = master.wait_jobs_done(["stop_self", "segfault", "exit3", "raises", "wait_forever"])

    assert jobs["stop_self"]["outcome"] == "killed"
    assert "heartbeat_timeout" in jobs["stop_self"]["error"]
    assert jobs["segfault"]["outcome"] == "crashed"
    assert "SIGSEGV" in jobs["segfault"]["error"]
    assert jobs["exit3"]["outcome"] == "exited"
    assert "exit code 3" in jobs["exit3"]["error"]
    assert jobs["raises"]["outcome"] == "error"
    assert "ValueError: boom from the job" in jobs["raises"]["error"]
    assert "Traceback" in jobs["raises"]["error"]
    assert jobs["wait_forever"]["outcome"] == "signalled"
    assert "SIGKILL" in jobs["wait_forever"]["error"]
    for key in ("stop_self", "segfault", "exit3", "wait_forever"):
        assert jobs[key]["max_rss_kb"] > 0 and "max RSS" not in jobs[key]["error"], jobs[key]  # its own field
        assert jobs[key]["state"] == "failed"
    log = master.log()
    assert "reason=heartbeat_timeout" in log


def test_stall_and_max_runtime_are_killed_with_their_own_reasons(master_factory):
    master = master_factory()
    master.submit("tests.apps.jobs:stall", {}, key="stall")
    master.submit("tests.apps.jobs:cpu_loop", {}, key="cpu")
    master.submit("tests.apps.jobs:stall_then_raise_on_term", {}, key="raises-on-term")
    jobs = master.wait_jobs_done(["stall", "cpu", "raises-on-term"])
    assert jobs["stall"]["outcome"] == "killed" and "stall_timeout" in jobs["stall"]["error"]
    assert jobs["cpu"]["outcome"] == "killed" and "max_runtime" in jobs["cpu"]["error"]
    # Its error on the kill's TERM does not hide the kill (it was recorded `error`, no reason).
    raised = jobs["raises-on-term"]
    assert (raised["outcome"], raised["reason"]) == ("killed", "stall_timeout"), raised
    assert "RuntimeError: cleanup failed on TERM" in raised["error"], raised["error"]
    log = master.log()
    assert "reason=stall_timeout" in log and "reason=max_runtime" in log


def test_a_hung_child_is_killed_and_rerun_with_the_same_parameters(master_factory):
    master = master_factory()
    master.submit("tests.apps.jobs:hang_first", {"s": 0.1, "tag": "same"}, key="h")
    jobs = master.wait_jobs_done(["h"])
    job = jobs["h"]
    assert job["state"] == "finished"
    assert job["attempt"] == 2
    assert job["result"] == {"attempt": 2}
    assert job["params"] == {"s": 0.1, "tag": "same"}
    wait_for(lambda: master.callbacks(), what="the callback")
    finished = [c for c in master.callbacks() if c["key"] == "h"]
    assert len(finished) == 1 and finished[0]["kind"] == "finished" and finished[0]["attempt"] == 2


def test_retries_then_failed_and_on_failed_runs_once(master_factory):
    master = master_factory()
    master.submit("tests.apps.jobs:flaky", {"fail_times": 2}, key="flaky")
    master.submit("tests.apps.jobs:always_fails", {}, key="bad")
    jobs = master.wait_jobs_done(["flaky", "bad"])
    assert jobs["flaky"]["state"] == "finished" and jobs["flaky"]["attempt"] == 3
    assert jobs["bad"]["state"] == "failed" and jobs["bad"]["attempt"] == 2  # retries=1
    wait_for(lambda: len(master.callbacks()) == 2, what="two callbacks")
    calls = sorted((c["key"], c["kind"]) for c in master.callbacks())
    assert calls == [("bad", "failed"), ("flaky", "finished")]


def test_grandchildren_die_with_the_job(master_factory, tmp_path):
    master = master_factory()
    pidfile = tmp_path / "grandchild.pid"
    master.submit("tests.apps.jobs:grandchild", {"pidfile": str(pidfile)}, key="g")
    jobs = master.wait_jobs_done(["g"])
    assert jobs["g"]["state"] == "finished"
    grandchild = int(pidfile.read_text())
    wait_for(lambda: not os.path.exists(f"/proc/{grandchild}") or
             open(f"/proc/{grandchild}/stat").read().rsplit(")", 1)[1].split()[0] == "Z",
             what="the grandchild to die with its job's process group")


def test_results_that_cannot_be_sent_fail_with_a_clear_error(master_factory):
    master = master_factory()
    master.submit("tests.apps.jobs:big_result", {}, key="big")
    master.submit("tests.apps.jobs:not_json", {}, key="obj")
    jobs = master.wait_jobs_done(["big", "obj"])
    assert jobs["big"]["outcome"] == "error"
    assert "65536-byte limit" in jobs["big"]["error"] and "file or a database" in jobs["big"]["error"]
    assert jobs["obj"]["outcome"] == "error"
    assert "not JSON" in jobs["obj"]["error"]


def test_an_outcome_owes_no_callback_when_the_app_registered_none_of_its_kind(master_factory):
    """A callback row owed, started and marked done for nothing cost the master two
    reads and a commit per job: only kinds the app registered are owed."""
    import sqlite3

    master = master_factory(app="tests.apps.finished_only:app")
    master.submit("tests.apps.finished_only:ok", {"n": 1}, key="ok")
    master.submit("tests.apps.finished_only:boom", {}, key="boom")
    jobs = master.wait_jobs_done(["ok", "boom"])
    assert jobs["ok"]["state"] == "finished" and jobs["boom"]["state"] == "failed"
    wait_for(lambda: master.callbacks(), what="ok's on_finished callback")
    assert [(c["key"], c["kind"]) for c in master.callbacks()] == [("ok", "finished")]
    db = sqlite3.connect(f"file:{master.paths.journal}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT j.key, c.kind FROM callbacks c JOIN jobs j ON j.id = c.job_id").fetchall()
    finally:
        db.close()
    assert rows == [("ok", "on_finished")]


@pytest.mark.parametrize("how", ["usr2", "sigkill"])
def test_a_kill_under_way_when_the_master_is_replaced_keeps_its_reason(master_factory, tmp_path, how):
    """Found from outside: a stall kill whose job was still in its TERM
    handler when its master was replaced (USR2) or killed and restarted was
    recorded `error` with no reason: the next master did not know a kill was
    under way. The kill's reason is noted on the attempt in the journal."""
    master = master_factory()
    term = tmp_path / "term"
    master.submit("tests.apps.jobs:stall_then_slowly_raise_on_term", {"s": 3.0, "term": str(term)}, key="slow")
    wait_for(term.exists, 20, "the stall kill's TERM")
    if how == "usr2":
        master.signal(signal.SIGUSR2)
        master.wait_log("ready generation=2", what="the new image")
    else:
        master.signal(signal.SIGKILL)
        assert master.wait_exit() == -signal.SIGKILL
        master = master_factory()  # adopts the job, still in its handler
    job = master.wait_jobs_done(["slow"])["slow"]
    assert (job["state"], job["outcome"], job["reason"]) == ("failed", "killed", "stall_timeout"), job
    # (The old image may have ended it itself, its kill_grace over before it exec'd: the same outcome.)
    assert job["error"].startswith("stall_timeout"), job["error"]
