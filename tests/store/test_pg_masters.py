"""Many masters on one PostgreSQL store, as real processes: claims split
between them, a master killed with SIGKILL has its jobs re-run by another
within ttl + grace, a fenced late outcome is kept off the job, and each
recorded outcome calls back once."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Master, phoenix_cli, wait_for

pytest.importorskip("psycopg")

TTL = "2"  # seconds: short, so that recovery is quick (grace = kill_grace 1 s + 2 x 0.2 s)


def shared_master(tmp_path: Path, name: str, url: str, *args: str) -> Master:
    state = tmp_path / name
    return Master(state, "tests.apps.jobs:app", "--store", url, "--lease-ttl", TTL, "--node", name, *args,
                  log_dir=tmp_path)


def submit(url: str, target: str, params: Any, key: str) -> dict[str, Any]:
    result = phoenix_cli("submit", target, json.dumps(params), "--key", key, "--store", url)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def status(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = phoenix_cli("status", "--json", "--store", url, *args)
    assert result.returncode in (0, 3), result.stderr
    return result.returncode, json.loads(result.stdout)


def jobs_by_key(url: str) -> dict[str, dict[str, Any]]:
    """What `phoenix status --json --store URL` lists as jobs, read in this process (faster than the command)."""
    from phoenix.store.postgres import PgStore

    with PgStore(url) as store:
        return {job["key"]: job for job in store.status_rows()}


def test_two_masters_share_the_jobs_and_report_them(tmp_path: Path, pg_url: str) -> None:
    a = shared_master(tmp_path, "a", pg_url, "--workers", "2").start()
    b = shared_master(tmp_path, "b", pg_url, "--workers", "2").start()
    try:
        assert submit(pg_url, "tests.apps.jobs:sleep", {"s": 0.3}, "job-0")["created"]  # the command, once
        from phoenix import Client

        client = Client(store=pg_url)  # and the client API, as a web app would
        for i in range(1, 8):
            assert client.submit("tests.apps.jobs:sleep", {"s": 0.3}, key=f"job-{i}")[1]
        wait_for(lambda: all(j["state"] == "finished" for j in jobs_by_key(pg_url).values())
                 and len(jobs_by_key(pg_url)) == 8, timeout=30, what="8 jobs finished")
        code, report = status(pg_url)
        assert code == 0
        nodes = {m["node"] for m in report["masters"]}
        assert nodes == {"a", "b"}
        assert {j["node"] for j in report["jobs"]} == {"a", "b"}  # both claimed some
        assert all(m["slots"] == 2 and m["lease_expires_in"] > 0 for m in report["masters"])
        code, only_a = status(pg_url, "--node", "a")
        assert [m["node"] for m in only_a["masters"]] == ["a"] and all(j["node"] == "a" for j in only_a["jobs"])
        wait_for(lambda: len(a.callbacks() + b.callbacks()) >= 8, what="a callback for each job")
        finished = [c for c in a.callbacks() + b.callbacks() if c["kind"] == "finished"]
        assert sorted(c["key"] for c in finished) == sorted(f"job-{i}" for i in range(8))  # once each
    finally:
        a.stop()
        b.stop()
    code, report = status(pg_url)
    assert code == 3  # no live lease left
    assert {m["state"] for m in report["masters"]} == {"stopped (expired)"}


def test_a_killed_masters_jobs_run_again_on_the_other_within_ttl_plus_grace(tmp_path: Path, pg_url: str) -> None:
    a = shared_master(tmp_path, "a", pg_url, "--workers", "2").start()
    b = shared_master(tmp_path, "b", pg_url, "--workers", "2").start()
    try:
        from phoenix import Client

        client = Client(store=pg_url)
        release = tmp_path / "release"
        for i in range(4):
            # Running still when the host is lost, however loaded the machine (at a fixed 3 s a job had
            # ended before the kill, and its process group was gone): each ends once `release` exists.
            client.submit("tests.apps.jobs:sleep", {"s": 60, "until": str(release)}, key=f"long-{i}")
        running = wait_for(lambda: (lambda js: js if all(j["state"] == "running" for j in js.values()) else None)(
            jobs_by_key(pg_url)), what="4 jobs running, 2 on each master")
        victims = {key: job["pid"] for key, job in running.items() if job["node"] == "a"}
        assert len(victims) == 2
        a.signal(signal.SIGKILL)  # the host is lost: its master and its children die
        a.wait_exit()
        for pid in victims.values():
            os.killpg(pid, signal.SIGKILL)
        release.touch()  # b's own two end; a's two run again on b, and end at once
        # ttl 2 s + grace 1.4 s + a recovery period, then a slot on b: well within 40 s
        done = wait_for(lambda: (lambda js: js if all(j["state"] == "finished" for j in js.values()) else None)(
            jobs_by_key(pg_url)), timeout=40, what="every job to finish on b")
        assert {key: (job["attempt"], job["node"]) for key, job in done.items()} == {
            key: (2, "b") if key in victims else (1, "b") for key in done}
        b.wait_log("recovered masters=a attempts=2")
        wait_for(lambda: len(b.callbacks()) >= len(done), what="a callback for each job")  # they run after the record
        assert sorted(c["key"] for c in b.callbacks() if c["kind"] == "finished") == sorted(done)  # once each
        code, report = status(pg_url)
        assert code == 0 and {m["node"]: m["state"] for m in report["masters"]}["a"].startswith("lost")
    finally:
        a.stop()
        b.stop()


def attempts(url: str, key: str) -> list[dict[str, Any]]:
    from phoenix.store.postgres import PgStore

    with PgStore(url) as store:
        job = store.job_by_key(key)
        assert job is not None
        return store.attempts_of(job["id"])


def test_a_frozen_masters_late_outcome_is_fenced(tmp_path: Path, pg_url: str) -> None:
    a = shared_master(tmp_path, "a", pg_url, "--workers", "1").start()
    b = shared_master(tmp_path, "b", pg_url, "--workers", "1")  # started once a is frozen
    try:
        release = tmp_path / "release"  # (running still when a is frozen, however loaded the machine)
        submit(pg_url, "tests.apps.jobs:sleep", {"s": 60, "until": str(release)}, "job")
        wait_for(lambda: jobs_by_key(pg_url)["job"]["state"] == "running", what="a to start the job")
        a.signal(signal.SIGSTOP)  # a host frozen past its lease; its child finishes meanwhile, unacknowledged
        release.touch()
        b.start()
        wait_for(lambda: [x["state"] for x in attempts(pg_url, "job")] == ["lost", "ended"], timeout=15,
                 what="b to recover a's attempt and run the job again")
        a.signal(signal.SIGCONT)
        a.wait_log("lease_lost node=a")
        wait_for(lambda: attempts(pg_url, "job")[0]["state"] == "late", what="a's late outcome kept on its attempt")
        first, second = attempts(pg_url, "job")
        assert (first["master"], first["outcome"], first["late_outcome"]) == ("a", "lost", "finished")
        assert (second["master"], second["outcome"]) == ("b", "finished")
        job = jobs_by_key(pg_url)["job"]
        assert job["state"] == "finished" and job["result"]["pid"] == second["pid"]  # b's result, not a's
        from phoenix.store.postgres import PgStore

        with PgStore(pg_url) as store:
            row = store.job_by_key("job")
        assert row is not None and job["result"]["attempt_id"] == row["current_attempt"]  # the fencing token
        wait_for(lambda: b.callbacks(), what="b's callback")
        assert [c["attempt"] for c in b.callbacks()] == [2] and a.callbacks() == []  # one callback
        submit(pg_url, "tests.apps.jobs:noop", {}, "after")  # a works on under its new epoch
        wait_for(lambda: jobs_by_key(pg_url)["after"]["state"] == "finished", what="a new job to finish")
    finally:
        a.signal(signal.SIGCONT)
        a.stop()
        b.stop()


def test_connections_killed_by_the_server_are_made_again(tmp_path: Path, pg_url: str) -> None:
    a = shared_master(tmp_path, "a", pg_url, "--workers", "2").start()
    try:
        submit(pg_url, "tests.apps.jobs:sleep", {"s": 1.0}, "during")
        wait_for(lambda: jobs_by_key(pg_url)["during"]["state"] == "running", what="the job to start")
        import psycopg

        with psycopg.connect(pg_url, autocommit=True) as conn:
            killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE application_name = 'phoenix' AND pid <> pg_backend_pid()").fetchone()
        assert killed is not None and killed[0] >= 2  # its store connection and its listener
        for i in range(3):
            submit(pg_url, "tests.apps.jobs:noop", {}, f"after-{i}")
        wait_for(lambda: all(j["state"] == "finished" for j in jobs_by_key(pg_url).values()), timeout=20,
                 what="every job to finish")
        wait_for(lambda: len(a.callbacks()) >= 4, what="a callback for each job")  # they run after the record
        assert sorted(c["key"] for c in a.callbacks()) == ["after-0", "after-1", "after-2", "during"]
    finally:
        a.stop()


def test_a_replacement_keeps_the_lease_and_adopts_its_children(tmp_path: Path, pg_url: str) -> None:
    a = shared_master(tmp_path, "a", pg_url, "--workers", "2").start()
    try:
        submit(pg_url, "tests.apps.jobs:sleep", {"s": 1.5}, "through-reload")
        wait_for(lambda: jobs_by_key(pg_url)["through-reload"]["state"] == "running", what="the job to start")
        a.signal(signal.SIGUSR2)
        a.wait_log("ready generation=2")
        wait_for(lambda: jobs_by_key(pg_url)["through-reload"]["state"] == "finished", what="the job to finish")
        [attempt] = attempts(pg_url, "through-reload")
        assert (attempt["master"], attempt["state"], attempt["outcome"]) == ("a", "ended", "finished")
        code, report = status(pg_url)
        assert code == 0 and [(m["generation"], m["epoch"]) for m in report["masters"]] == [(2, 1)]
    finally:
        a.stop()


def test_a_dead_masters_children_end_before_another_master_runs_their_jobs(tmp_path: Path, pg_url: str) -> None:
    """SIGKILL takes the master but not its children (they keep running, as
    on one host, for a new master to adopt). With a shared store another host
    re-runs the job once the lease is recovered, so the orphaned child must
    end itself first: the two attempts never overlap."""
    lifetimes = tmp_path / "lifetimes"
    a = shared_master(tmp_path, "a", pg_url, "--workers", "1").start()
    b = shared_master(tmp_path, "b", pg_url, "--workers", "1")  # started once a runs the job
    orphan = None
    try:
        submit(pg_url, "tests.apps.jobs:lifetime", {"s": 60, "file": str(lifetimes)}, "job")
        job = wait_for(lambda: (lambda j: j if j["state"] == "running" and j["node"] == "a" else None)(
            jobs_by_key(pg_url).get("job", {"state": None, "node": None})), what="a to start the job")
        orphan = job["pid"]
        b.start()
        a.signal(signal.SIGKILL)  # the master only: its child runs on, reparented
        a.wait_exit()
        wait_for(lambda: jobs_by_key(pg_url)["job"]["state"] == "finished", timeout=20,
                 what="b to recover the job and run it again")
        notes = [line.split() for line in lifetimes.read_text().splitlines()]
        times = {(what, int(attempt)): float(at) for what, attempt, at in notes}
        assert set(times) == {("start", 1), ("end", 1), ("start", 2), ("end", 2)}, notes
        assert times[("end", 1)] < times[("start", 2)], notes  # the orphan ended (TERM) before the re-run
        assert times[("end", 1)] - times[("start", 1)] < 10  # well before its 60 s
    finally:
        if orphan is not None:
            try:
                os.killpg(orphan, signal.SIGKILL)
            except ProcessLookupError:
                pass
        a.stop()
        b.stop()


def test_cancel_on_a_shared_store_cancels_a_pending_job_with_no_master(pg_url: str) -> None:
    """A running one is cancelled from any host too: tests/store/test_pg_cancel.py."""
    submit(pg_url, "tests.apps.jobs:sleep", {"s": 30}, "waiting")  # no master yet: it stays pending
    result = phoenix_cli("cancel", "waiting", "--store", pg_url)
    assert result.returncode == 0, result.stderr
    assert "cancelled waiting (it was pending)" in result.stdout
    assert jobs_by_key(pg_url)["waiting"]["state"] == "cancelled"


def test_the_preflight_checks_the_targets_queued_in_the_shared_store(tmp_path: Path, pg_url: str) -> None:
    """A release that lacks a target jobs in the shared store use is refused
    (what USR2 and `phoenix reload` run before exec), as with the journal."""
    submit(pg_url, "tests.apps.jobs:renamed_away", {}, "orphaned")  # no master: it stays pending
    refused = phoenix_cli("check", "tests.apps.jobs:app", "--store", pg_url, state_dir=tmp_path / "state")
    assert refused.returncode == 1, refused.stderr
    assert "'tests.apps.jobs:renamed_away' (1 pending" in refused.stderr and "Traceback" not in refused.stderr
    forced = phoenix_cli("check", "tests.apps.jobs:app", "--store", pg_url, "--force", state_dir=tmp_path / "state")
    assert forced.returncode == 0 and "shared store reachable" in forced.stdout, forced.stderr
