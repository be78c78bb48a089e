"""A release cannot silently orphan queued work (issue 11).

The preflight (`phoenix check`, run before every replacement) refuses code
that lacks a job target that pending or running jobs in the journal use,
naming each missing target and how many jobs use it; the running master
carries on unharmed. `phoenix reload --force` (and `phoenix check --force`)
deploys anyway; a plain USR2 never forces. A job whose target cannot be
resolved when its turn comes fails at once, naming the target.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from phoenix.store.sqlite import Journal
from tests.apps.replace_tools import SLOW, live
from tests.conftest import REPO, phoenix_cli, wait_for
from tests.faults.conftest import log_lines

ORIGINAL = (REPO / "tests" / "apps" / "replace.py").read_text()
# The release under test renames the job function `quick`.
RENAMED = ORIGINAL.replace("def quick(params):", "def quick_renamed(params):")


def release(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A deployable copy of tests.apps.replace as the module `deployed_app`,
    and the environment that imports it."""
    code = tmp_path / "code"
    code.mkdir()
    module = code / "deployed_app.py"
    module.write_text(ORIGINAL)
    return module, {"PYTHONPATH": f"{code}:{REPO}", "PYTHONDONTWRITEBYTECODE": "1"}


def test_check_refuses_code_that_lacks_a_target_of_queued_jobs(tmp_path, state_dir):
    module, env = release(tmp_path)
    state_dir.mkdir()
    journal = Journal(state_dir / "journal.db")
    try:
        for i in range(2):
            journal.submit("deployed_app:quick", json.dumps({"i": i}), f"pending-{i}")
        journal.submit("deployed_app:until", "{}", "kept")  # a target the release keeps
        job_id, _ = journal.submit("deployed_app:quick", "{}", "running")
        (job,) = [j for j in journal.pending(10) if j.id == job_id]
        journal.begin_attempt(job, 1, 999_999, None)
        journal.submit("deployed_app:gone", "{}", "done")  # ended jobs of a removed target do not matter
        journal.db.execute("UPDATE jobs SET state = 'finished' WHERE key = 'done'")
    finally:
        journal.close()
    check = lambda *flags: phoenix_cli("check", "deployed_app:app", *flags, state_dir=state_dir, env=env)  # noqa: E731

    assert check().returncode == 0  # the code as deployed has every target

    module.write_text(RENAMED)
    refused = check()
    assert refused.returncode == 1, refused
    assert "Traceback" not in refused.stderr
    assert "'deployed_app:quick' (2 pending, 1 running" in refused.stderr, refused.stderr
    assert "has no attribute 'quick'" in refused.stderr
    assert "deployed_app:until" not in refused.stderr and "deployed_app:gone" not in refused.stderr
    assert "--force" in refused.stderr

    forced = check("--force")
    assert forced.returncode == 0, forced
    assert forced.stdout.startswith("ok: deployed_app:app imports")
    assert "'deployed_app:quick' (2 pending, 1 running" in forced.stderr, forced.stderr


def test_reload_refused_names_the_target_and_leaves_the_master_unharmed(master_factory, state_dir, tmp_path):
    module, env = release(tmp_path)
    master = master_factory("--workers", "1", app="deployed_app:app", env=env)
    done = tmp_path / "done"

    def submit(target: str, params: object, key: str) -> None:
        result = phoenix_cli("submit", target, json.dumps(params), "--key", key, state_dir=state_dir, env=env)
        assert result.returncode == 0, result

    submit("deployed_app:until", {"path": str(done)}, "long")
    long_pid = wait_for(lambda: master.jobs()["long"]["pid"], SLOW, "the long job to run")
    quick = [f"q{i}" for i in range(3)]
    for key in quick:  # the only slot is taken: they wait
        submit("deployed_app:quick", {"key": key}, key)

    module.write_text(RENAMED)
    refused = phoenix_cli("reload", "--wait", state_dir=state_dir, env=env)
    assert refused.returncode == 1, refused
    assert "'deployed_app:quick' (3 pending" in refused.stderr, refused.stderr
    master.wait_log("reload_failed", timeout=SLOW)
    master.signal(signal.SIGUSR2)  # a plain USR2 never forces: refused the same way
    log = master.wait_log("reload_failed", count=2, timeout=SLOW)
    assert log.count("'deployed_app:quick' (3 pending") >= 2

    # Unharmed: the same master answers, its job runs on, the queued jobs wait as they were.
    status = live(state_dir)
    assert status["master"]["pid"] == master.pid and status["master"]["generation"] == 1
    jobs = master.jobs()
    assert jobs["long"]["state"] == "running" and jobs["long"]["pid"] == long_pid
    assert [(jobs[k]["state"], jobs[k]["attempt"]) for k in quick] == [("pending", 0)] * 3

    forced = phoenix_cli("reload", "--force", "--wait", state_dir=state_dir, env=env)
    assert forced.returncode == 0 and "generation 2" in forced.stdout, forced
    assert master.wait_log("reload_forced", timeout=SLOW)
    done.touch()
    jobs = master.wait_jobs_done(["long", *quick], timeout=SLOW)
    assert jobs["long"]["state"] == "finished" and jobs["long"]["result"]["pid"] == long_pid
    for key in quick:  # the slot freed: each fails at once, naming its target
        assert jobs[key]["state"] == "failed" and jobs[key]["attempt"] == 0, jobs[key]
        assert "'deployed_app:quick'" in jobs[key]["error"], jobs[key]
    failed = log_lines(master.log(), "job_failed", target="deployed_app:quick")
    assert len(failed) == 3, master.log()[-3000:]
    wait_for(lambda: sorted(c["key"] for c in master.callbacks() if c["kind"] == "failed") == quick,
             SLOW, "the on_failed callbacks")


def test_a_job_whose_target_is_gone_fails_at_once_naming_it(master_factory, state_dir):
    """As after a forced release (or jobs written into the journal by an older
    release while no master ran): no attempt, no retry, the target named in
    the log line and in the job's error, and its on_failed callback."""
    state_dir.mkdir()
    journal = Journal(state_dir / "journal.db")
    try:
        journal.submit("tests.apps.jobs:renamed_away", "{}", "orphan")
    finally:
        journal.close()
    master = master_factory("--exit-when-done", start=False).start(wait_ready=False)
    assert master.wait_exit() == 1
    job = master.jobs()["orphan"]
    assert job["state"] == "failed" and job["attempt"] == 0
    assert "'tests.apps.jobs:renamed_away'" in job["error"] and "no attribute 'renamed_away'" in job["error"]
    assert len(log_lines(master.log(), "job_failed", job="orphan", target="tests.apps.jobs:renamed_away")) == 1
    assert [c["key"] for c in master.callbacks() if c["kind"] == "failed"] == ["orphan"]
