"""The operator's commands on real masters, real jobs and a real journal:
`phoenix jobs`, `show`, `retry`, `cancel`, `prune`, and what
`--exit-when-done` judges."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import phoenix_cli, wait_for


def _cli(state_dir: Path, *args: str):
    return phoenix_cli(*args, state_dir=state_dir)


def _job(state_dir: Path, key: str) -> dict:
    result = _cli(state_dir, "show", key, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _submit(state_dir: Path, target: str, params: object, key: str) -> None:
    result = _cli(state_dir, "submit", f"tests.apps.jobs:{target}", json.dumps(params), "--key", key)
    assert result.returncode == 0, result.stderr


def test_every_command_says_when_nothing_has_run_and_creates_nothing(state_dir):
    for args in (["jobs"], ["show", "k"], ["retry", "k"], ["cancel", "k"], ["prune", "--finished-before", "7d"]):
        result = _cli(state_dir, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip() == f"phoenix: error: no journal in {state_dir}: nothing has run here"
    assert not state_dir.exists()


def test_bad_durations_and_arguments_are_one_line_and_exit_2(state_dir):
    _submit(state_dir, "noop", 1, "a")
    for args in (["jobs", "--since", "soon"], ["prune", "--finished-before", "7"],
                 ["prune", "--finished-before", "7d", "--failed-before", "-1d"], ["retry"],
                 ["retry", "a", "--failed"], ["retry", "a", "--target", "x"]):
        result = _cli(state_dir, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert "'soon' is not a duration" in _cli(state_dir, "jobs", "--since", "soon").stderr


def test_jobs_lists_newest_first_filters_pages_and_escapes(state_dir):
    for n in range(5):
        _submit(state_dir, "noop", n, f"job-{n}")
    _submit(state_dir, "sleep", {"s": 1}, "[bold]x[/bold]")
    listing = _cli(state_dir, "jobs", "--limit", "3")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["key", "target", "state", "attempts", "last", "outcome", "age"]
    assert [line.split()[0] for line in lines[1:4]] == ["[bold]x[/bold]", "job-4", "job-3"]
    assert lines[4].startswith("... 3 more (of 6)")
    report = json.loads(_cli(state_dir, "jobs", "--json", "--target", "tests.apps.jobs:sleep").stdout)
    assert [job["key"] for job in report["jobs"]] == ["[bold]x[/bold]"] and report["more"] == 0
    assert json.loads(_cli(state_dir, "jobs", "--json", "--state", "finished").stdout)["total"] == 0
    assert json.loads(_cli(state_dir, "jobs", "--json", "--since", "1h").stdout)["total"] == 6


def test_show_gives_every_attempt_with_its_traceback(master_factory, state_dir):
    master = master_factory()
    _submit(state_dir, "always_fails", None, "bad")  # retries=1: two attempts
    wait_for(lambda: _job(state_dir, "bad")["state"] == "failed", 20, "the job to fail")
    job = _job(state_dir, "bad")
    assert [a["n"] for a in job["attempt_list"]] == [1, 2]
    for attempt in job["attempt_list"]:
        assert attempt["pid"] and attempt["node"] == os.uname().nodename and attempt["duration"] >= 0
        assert attempt["outcome"] == "error" and "RuntimeError: always" in attempt["error"]
    text = _cli(state_dir, "show", "bad")
    assert text.returncode == 0 and "attempt 2 error:\nTraceback" in text.stdout
    assert _cli(state_dir, "show", "nope").returncode == 1
    master.stop()


def test_retry_runs_a_failed_job_again_numbering_on(master_factory, state_dir):
    master = master_factory()
    _submit(state_dir, "always_fails", None, "bad")
    _submit(state_dir, "noop", 1, "good")
    wait_for(lambda: _job(state_dir, "bad")["state"] == "failed", 20, "the job to fail")
    wait_for(lambda: _job(state_dir, "good")["state"] == "finished", 20, "the job to finish")
    refused = _cli(state_dir, "retry", "bad", "good")
    assert refused.returncode == 1
    assert "job 'good' is finished: only failed or cancelled jobs can be retried" in refused.stderr
    assert _job(state_dir, "bad")["state"] == "failed"  # all or nothing
    retried = _cli(state_dir, "retry", "bad")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"retried": ["bad"]}
    # A fresh budget: two more attempts (retries=1), numbered 3 and 4; the master started them at once.
    wait_for(lambda: len(_job(state_dir, "bad")["attempt_list"]) == 4 and _job(state_dir, "bad")["state"] == "failed",
             20, "the retried job to fail again")
    assert [a["n"] for a in _job(state_dir, "bad")["attempt_list"]] == [1, 2, 3, 4]
    wait_for(lambda: [c["attempt"] for c in master.callbacks() if c["key"] == "bad"] == [2, 4], 10,
             "on_failed for each end")
    assert json.loads(_cli(state_dir, "retry", "--failed").stdout) == {"retried": ["bad"]}
    master.stop()


def test_cancel_a_running_job_terms_its_group_and_never_reruns_it(master_factory, state_dir, tmp_path):
    master = master_factory()
    term_file, ready = tmp_path / "term", tmp_path / "ready"
    _submit(state_dir, "records_term", {"file": str(term_file), "ready": str(ready)}, "long")  # retries=3
    wait_for(ready.exists, 20, "the job to run")
    result = _cli(state_dir, "cancel", "long")
    assert result.returncode == 0, result.stderr
    assert "cancelling long" in result.stdout
    wait_for(lambda: _job(state_dir, "long")["state"] == "cancelled", 20, "the job to be cancelled")
    job = _job(state_dir, "long")
    assert [(a["n"], a["outcome"]) for a in job["attempt_list"]] == [(1, "cancelled")]  # no retry
    # The job and its grandchild, the group, got the TERM. The job's end can be
    # recorded before the grandchild's handler has written its line: wait for it.
    wait_for(lambda: len(set(term_file.read_text().split("\n")) - {""}) == 2, 10, "the grandchild's TERM line")
    callback = wait_for(lambda: [c for c in master.callbacks() if c["key"] == "long"], 10, "on_failed")
    assert callback[0]["kind"] == "failed" and callback[0]["outcome"] == "cancelled"
    assert callback[0]["payload"].startswith("cancelled by the operator (phoenix cancel)")
    again = _cli(state_dir, "cancel", "long")
    assert again.returncode == 1 and "job 'long' is cancelled: only scheduled, pending or running" in again.stderr
    master.stop()


def test_cancel_pending_without_a_master_and_running_needs_one(master_factory, state_dir, tmp_path):
    _submit(state_dir, "noop", 1, "queued")
    assert _cli(state_dir, "cancel", "queued").stdout.strip() == "cancelled queued (it was pending)"
    assert _job(state_dir, "queued")["state"] == "cancelled"
    ready = tmp_path / "ready"
    _submit(state_dir, "records_term", {"file": str(tmp_path / "term"), "ready": str(ready)}, "long")
    master = master_factory()
    wait_for(ready.exists, 20, "the job to run")
    assert _job(state_dir, "queued")["attempt_list"] == []  # a cancelled job is not started
    assert _cli(state_dir, "stop", "--leave-running").returncode == 0
    master.wait_exit()
    refused = _cli(state_dir, "cancel", "long")
    assert refused.returncode == 1
    assert f"job 'long' is running and no master runs on {state_dir} to stop it" in refused.stderr
    master = master_factory()  # adopts it, and cancels it by its pidfd
    assert _cli(state_dir, "cancel", "long").returncode == 0
    wait_for(lambda: _job(state_dir, "long")["state"] == "cancelled", 20, "the adopted job to be cancelled")
    master.stop()


def test_prune_deletes_old_ended_jobs_and_keeps_pending_and_running(master_factory, state_dir, tmp_path):
    master = master_factory("--workers", "1")
    _submit(state_dir, "noop", 1, "done")
    _submit(state_dir, "raises", None, "broken")
    wait_for(lambda: len(master.callbacks()) == 2, 20, "two jobs to end and their callbacks to run")
    ready = tmp_path / "ready"
    _submit(state_dir, "records_term", {"file": str(tmp_path / "term"), "ready": str(ready)}, "running")
    wait_for(ready.exists, 20, "the job to run")
    _submit(state_dir, "noop", 2, "waiting")  # its one slot is taken: it stays pending
    kept = _cli(state_dir, "prune", "--finished-before", "0s", "--json")
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["jobs"] == 1
    pruned = json.loads(_cli(state_dir, "prune", "--finished-before", "0s", "--failed-before", "0s", "--json").stdout)
    assert pruned["jobs"] == 1 and pruned["attempts"] == 1
    states = {job["key"]: job["state"] for job in json.loads(_cli(state_dir, "jobs", "--json").stdout)["jobs"]}
    assert states == {"running": "running", "waiting": "pending"}
    master.stop()


def test_exit_when_done_ignores_an_earlier_runs_failure(master_factory, state_dir):
    first = master_factory("--exit-when-done", start=False)
    _submit(state_dir, "raises", None, "old-failure")
    first.start(wait_ready=False)
    assert first.wait_exit() == 1
    _submit(state_dir, "noop", 1, "new-work")
    second = master_factory("--exit-when-done", start=False)
    second.start(wait_ready=False)
    assert second.wait_exit() == 0
    assert _job(state_dir, "old-failure")["state"] == "failed"
    assert _job(state_dir, "new-work")["state"] == "finished"
