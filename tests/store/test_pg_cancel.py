"""Cancel from any host (issue 20 item 5): `phoenix cancel KEY --store URL`,
run where no master runs, ends a job running on another node's master within
3 s (outcome cancelled, never re-run, on_failed once); a job whose master is
dead is recorded cancelled by the master that recovers it; a cancel that
comes after the end changes nothing. First what the store does, in this
process; then real masters and the command as its own process."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import phoenix_cli, wait_for
from tests.store.test_pg_masters import attempts, jobs_by_key, shared_master, submit

psycopg = pytest.importorskip("psycopg")

from phoenix.rules.outcomes import CANCELLED_REASON  # noqa: E402
from phoenix.store.base import CancelRequest  # noqa: E402
from phoenix.store.postgres import PgStore  # noqa: E402
from tests.store.test_pg_store import expire, lost_job, master  # noqa: E402

CANCEL_WITHIN = 3.0  # seconds from the command's answer to the job's process gone: the promise


# -- the store ---------------------------------------------------------------------------------


def test_a_cancel_marks_the_running_attempt_and_tells_its_master_only(pg_url: str) -> None:
    a, b = master(pg_url, "a"), master(pg_url, "b")
    job_id, _ = a.submit("m:f", "null", "k")
    _job, attempt_id = a.claim(1, 10, None)  # type: ignore[misc]
    listener = psycopg.connect(pg_url, autocommit=True)
    try:
        listener.execute("LISTEN phoenix_wake")
        with PgStore(pg_url) as anywhere:  # a command's handle: no node, no lease
            assert anywhere.cancel("k") == CancelRequest("running", "a", True)
        assert [n.payload for n in listener.notifies(timeout=0.5, stop_after=1)] == [f"cancel:{attempt_id}"]
    finally:
        listener.close()
    assert a.cancels_requested() == {attempt_id}
    assert b.cancels_requested() == set()  # b runs no attempt of it
    assert b.job_row(job_id)["state"] == "running"  # type: ignore[index]  # its master ends it, then records
    a.end_attempt(attempt_id, job_id, outcome="cancelled", reason=CANCELLED_REASON, error=CANCELLED_REASON,
                  result_json=None, max_rss_kb=None, job_state="cancelled", counts_as_failure=False,
                  callback="on_failed", attempt_n=1)
    assert a.cancels_requested() == set()  # ended: nothing more to look at


def test_a_cancel_of_an_ended_job_changes_nothing(pg_url: str) -> None:
    a = master(pg_url, "a")
    job_id, _ = a.submit("m:f", "null", "k")
    _job, attempt_id = a.claim(1, 10, None)  # type: ignore[misc]
    a.end_attempt(attempt_id, job_id, outcome="finished", reason=None, error=None, result_json="1",
                  max_rss_kb=None, job_state="finished", counts_as_failure=False, callback=None, attempt_n=1)
    before = a.job_row(job_id)
    with PgStore(pg_url) as anywhere:
        assert anywhere.cancel("k") == CancelRequest("finished")
        assert anywhere.cancel("no-such-key") is None
    assert a.job_row(job_id) == before
    assert [x["reason"] for x in a.attempts_of(job_id)] == [None]


def test_the_recovery_of_a_dead_master_records_its_cancelled_attempt_cancelled(pg_url: str) -> None:
    a, b = master(pg_url, "a"), master(pg_url, "b")
    job_id, _ = a.submit("m:f", "null", "doomed")
    other_id, _ = a.submit("m:f", "null", "other")
    a.claim(1, 10, None)
    a.claim(1, 11, None)
    expire(pg_url, "a")
    with PgStore(pg_url) as anywhere:
        assert anywhere.cancel("doomed") == CancelRequest("running", "a", False)
    [(_callback, owed_job, attempt, kind)] = b.recover(5.0, lost_job)  # `other` goes back to pending: no callback
    assert (owed_job, attempt, kind) == (job_id, 1, "on_failed")
    doomed = b.job_row(job_id)
    assert doomed is not None and (doomed["state"], doomed["outcome"], doomed["failures"]) == ("cancelled",
                                                                                              "cancelled", 0)
    assert doomed["error"].startswith(CANCELLED_REASON)
    [recovered] = b.attempts_of(job_id)
    assert (recovered["state"], recovered["outcome"]) == ("lost", "cancelled")
    assert b.job_row(other_id)["state"] == "pending"  # type: ignore[index]
    assert b.claim(1, 20, None)[0].key == "other"  # type: ignore[index]  # and never the cancelled one
    assert b.claim(1, 21, None) is None


# -- real masters, the command run where no master runs ---------------------------------------


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def failed_callbacks(master: Any, key: str) -> list[dict[str, Any]]:
    return [c for c in master.callbacks() if c["kind"] == "failed" and c["key"] == key]


def test_a_job_running_on_another_master_is_cancelled_from_a_host_with_none(tmp_path: Path, pg_url: str) -> None:
    a = shared_master(tmp_path, "a", pg_url, "--workers", "1").start()
    try:
        submit(pg_url, "tests.apps.jobs:sleep", {"s": 60}, "busy")
        pid = wait_for(lambda: (lambda job: job["pid"] if job["state"] == "running" else None)(
            jobs_by_key(pg_url)["busy"]), what="a to start the job")
        started = time.monotonic()
        result = phoenix_cli("cancel", "busy", "--store", pg_url)  # a process of its own; no master of its own
        answered = time.monotonic()
        assert result.returncode == 0, result.stderr
        assert "cancelling busy on node a" in result.stdout
        wait_for(lambda: not alive(pid), timeout=CANCEL_WITHIN, what="the job's process to end")
        ended = time.monotonic()
        wait_for(lambda: jobs_by_key(pg_url)["busy"]["state"] == "cancelled", what="the cancel recorded")
        [only] = attempts(pg_url, "busy")  # never run again
        assert (only["master"], only["outcome"], only["reason"]) == ("a", "cancelled", CANCELLED_REASON)
        wait_for(lambda: failed_callbacks(a, "busy"), what="on_failed")
        [called] = failed_callbacks(a, "busy")
        assert called["outcome"] == "cancelled" and called["payload"].startswith(CANCELLED_REASON)
        a.wait_log("reason=cancelled")
        print(f"cancel from another host: the job's process ended {ended - answered:.2f} s after the command "
              f"answered, {ended - started:.2f} s after it started (its own start-up included)")
    finally:
        a.stop()
    assert jobs_by_key(pg_url)["busy"]["state"] == "cancelled"
    assert len(failed_callbacks(a, "busy")) == 1


def test_a_cancel_whose_notification_is_lost_is_found_by_the_masters_poll(tmp_path: Path, pg_url: str) -> None:
    """The mark in the store is the request; the NOTIFY only makes it quick.
    Here the mark is written with no NOTIFY (as if the master's listening
    connection had dropped it): the master's look every CANCEL_POLL finds it."""
    a = shared_master(tmp_path, "a", pg_url, "--workers", "1").start()
    try:
        submit(pg_url, "tests.apps.jobs:sleep", {"s": 60}, "busy")
        pid = wait_for(lambda: (lambda job: job["pid"] if job["state"] == "running" else None)(
            jobs_by_key(pg_url)["busy"]), what="a to start the job")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            marked = conn.execute("UPDATE attempts SET reason = 'cancelled' WHERE outcome IS NULL AND job_id = "
                                  "(SELECT id FROM jobs WHERE key = 'busy')").rowcount
        asked = time.monotonic()
        assert marked == 1
        wait_for(lambda: not alive(pid), timeout=CANCEL_WITHIN, what="the job's process to end")
        print(f"cancel without its notification: the job's process ended {time.monotonic() - asked:.2f} s later")
        wait_for(lambda: jobs_by_key(pg_url)["busy"]["state"] == "cancelled", what="the cancel recorded")
        assert [x["outcome"] for x in attempts(pg_url, "busy")] == ["cancelled"]
    finally:
        a.stop()


def test_a_job_that_fails_just_as_it_is_cancelled_is_not_run_again(tmp_path: Path, pg_url: str) -> None:
    """The job raises (it has retries left) after its cancel is in the
    store and before its master heard of it: the cancel holds."""
    a = shared_master(tmp_path, "a", pg_url, "--workers", "1").start()
    told = tmp_path / "fail-now"
    try:
        submit(pg_url, "tests.apps.jobs:fails_when_told", {"path": str(told)}, "racing")
        wait_for(lambda: jobs_by_key(pg_url)["racing"]["state"] == "running", what="a to start the job")
        with psycopg.connect(pg_url, autocommit=True) as conn:  # the request, its NOTIFY not (yet) read
            conn.execute("UPDATE attempts SET reason = 'cancelled' WHERE outcome IS NULL AND job_id = "
                         "(SELECT id FROM jobs WHERE key = 'racing')")
        told.touch()  # it fails within 20 ms, well before the master's next look (every 2 s)
        wait_for(lambda: jobs_by_key(pg_url)["racing"]["state"] in ("cancelled", "failed"), what="the job to end")
        assert jobs_by_key(pg_url)["racing"]["state"] == "cancelled"
        [only] = attempts(pg_url, "racing")
        assert only["outcome"] == "cancelled"
        wait_for(lambda: failed_callbacks(a, "racing"), what="on_failed")
        assert failed_callbacks(a, "racing")[0]["payload"].startswith(CANCELLED_REASON)
    finally:
        a.stop()
    assert len(failed_callbacks(a, "racing")) == 1


def test_a_job_whose_master_is_dead_is_recorded_cancelled_by_the_recovery(tmp_path: Path, pg_url: str) -> None:
    a = shared_master(tmp_path, "a", pg_url, "--workers", "1").start()
    b = shared_master(tmp_path, "b", pg_url, "--workers", "1")  # started once a is dead and the job cancelled
    orphan = None
    try:
        submit(pg_url, "tests.apps.jobs:sleep", {"s": 60}, "doomed")
        orphan = wait_for(lambda: (lambda job: job["pid"] if job["state"] == "running" else None)(
            jobs_by_key(pg_url)["doomed"]), what="a to start the job")
        a.signal(signal.SIGKILL)  # the host is lost: its master and its children die
        a.wait_exit()
        os.killpg(orphan, signal.SIGKILL)
        wait_for(lambda: _lease_expired(pg_url, "a"), what="a's lease to lapse")
        result = phoenix_cli("cancel", "doomed", "--store", pg_url)
        assert result.returncode == 0, result.stderr
        assert "node a's master has no live lease" in result.stdout
        b.start()
        b.wait_log("recovered masters=a attempts=1")
        job = jobs_by_key(pg_url)["doomed"]
        assert (job["state"], job["outcome"]) == ("cancelled", "cancelled")
        assert [x["outcome"] for x in attempts(pg_url, "doomed")] == ["cancelled"]  # not run again
        wait_for(lambda: failed_callbacks(b, "doomed"), what="on_failed, on the recovering master")
        [called] = failed_callbacks(b, "doomed")
        assert called["outcome"] == "cancelled" and called["payload"].startswith(CANCELLED_REASON)
        # b has a free slot and claims: a job submitted now runs, the cancelled one never does
        submit(pg_url, "tests.apps.jobs:noop", {}, "after")
        wait_for(lambda: jobs_by_key(pg_url)["after"]["state"] == "finished", what="b to run a later job")
        assert [x["n"] for x in attempts(pg_url, "doomed")] == [1]
    finally:
        if orphan is not None:
            try:
                os.killpg(orphan, signal.SIGKILL)
            except ProcessLookupError:
                pass
        a.stop()
        b.stop()
    assert failed_callbacks(a, "doomed") == []


def _lease_expired(url: str, node: str) -> bool:
    with PgStore(url) as store:
        return any(m["node"] == node and m["lease_expires_in"] < 0 for m in store.masters())


def test_a_cancel_of_a_job_that_just_finished_says_so_and_changes_nothing(tmp_path: Path, pg_url: str) -> None:
    a = shared_master(tmp_path, "a", pg_url, "--workers", "1").start()
    try:
        submit(pg_url, "tests.apps.jobs:noop", {"x": 1}, "quick")
        wait_for(lambda: jobs_by_key(pg_url)["quick"]["state"] == "finished", what="the job to finish")
        before = jobs_by_key(pg_url)["quick"]
        result = phoenix_cli("cancel", "quick", "--store", pg_url)
        assert result.returncode == 1
        assert "job 'quick' is finished: only scheduled, pending or running jobs can be cancelled" in result.stderr
        assert "Traceback" not in result.stderr
        assert jobs_by_key(pg_url)["quick"] == before
        assert [(x["outcome"], x["reason"]) for x in attempts(pg_url, "quick")] == [("finished", None)]
        wait_for(lambda: [c["kind"] for c in a.callbacks()] == ["finished"], what="its on_finished")
    finally:
        a.stop()
    assert [c["kind"] for c in a.callbacks()] == ["finished"]  # no on_failed for a cancel that came too late
    assert json.loads(json.dumps(before["result"])) == {"x": 1}
