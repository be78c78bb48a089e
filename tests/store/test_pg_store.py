"""What only a shared store does: leases gate claims, recovery by any
master, fencing of a recovered master's late outcome, concurrent claims,
one NOTIFY per submitting transaction, and schema versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.conftest import REPO, phoenix_cli

psycopg = pytest.importorskip("psycopg")

from phoenix.store.base import StoreUnavailable  # noqa: E402
from phoenix.store.postgres import RECOVERED_REASON, SCHEMA_VERSION, PgStore, migrate  # noqa: E402


def master(url: str, node: str, ttl: float = 30.0) -> PgStore:
    store = PgStore(url, node=node, lease_ttl=ttl)
    store.register_master(os.getpid(), 1, time.time(), 2, "app")
    return store


def expire(url: str, node: str, seconds_ago: float = 60.0) -> None:
    """As if `node` had stopped renewing long ago (the database's clock)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE masters SET lease_expires_at = now() - make_interval(secs => %s) WHERE node = %s",
                     (seconds_ago, node))


def lost_job(target: str, failures: int) -> tuple[str, bool, float | None, str | None]:
    return "pending", True, None, None


def failed_job(target: str, failures: int) -> tuple[str, bool, float | None, str | None]:
    return "failed", True, None, "on_failed"


def test_a_master_claims_only_while_its_lease_is_live(pg_url: str) -> None:
    a = master(pg_url, "a")
    a.submit("m:f", "null", "k")
    expire(pg_url, "a", 0.0)
    assert a.claim(1, 10, None) is None
    assert a.renew_lease("running", 2, 0)
    assert a.claim(1, 10, None) is not None


def test_the_renewal_says_when_a_master_is_due_for_recovery(pg_url: str) -> None:
    """An idle master's period is one statement: the renewal itself looks
    for masters to recover (recover() runs only when it says so)."""
    a, b = master(pg_url, "a"), master(pg_url, "b")
    assert b.renew_lease("running", 2, 0, grace=5.0) and b.recovery_due is False
    expire(pg_url, "a", 2.0)  # expired, but within the grace: not yet
    assert b.renew_lease("running", 2, 0, grace=5.0) and b.recovery_due is False
    expire(pg_url, "a", 60.0)
    assert b.renew_lease("running", 2, 0, grace=5.0) and b.recovery_due is True
    b.recover(5.0, lost_job)
    assert b.last_recovery == (["a"], 0)
    assert b.renew_lease("running", 2, 0, grace=5.0) and b.recovery_due is False  # a is `lost` now
    a.release_lease("stopped")  # a stopped master with no open attempt is never due


def test_an_outcome_and_a_renewal_are_one_round_trip_each(pg_url: str, tmp_path: Any) -> None:
    """No BEGIN/COMMIT around single statements, the outcome in one CTE:
    what the idle-cost and throughput targets rest on (libpq's own trace of
    the messages sent: one Sync or Query per round trip)."""
    a = master(pg_url, "a")
    job_id, _ = a.submit("m:f", "null", "k")
    _job, attempt = a.claim(1, 10, None)  # type: ignore[misc]
    trace = tmp_path / "libpq.trace"
    with open(trace, "w") as out:
        a.connect().pgconn.trace(out.fileno())
        assert a.end_attempt(attempt, job_id, outcome="finished", reason=None, error=None, result_json="1",
                             max_rss_kb=None, job_state="finished", counts_as_failure=False, callback="on_finished",
                             attempt_n=1)[0]
        assert a.renew_lease("running", 2, 0, grace=5.0)
        a.connect().pgconn.untrace()
    sent = [line.split("\t") for line in trace.read_text().splitlines()]
    round_trips = [f for f in sent if "F" in f and ("Sync" in f or "Query" in f)]
    assert len(round_trips) == 2, trace.read_text()
    row = a.job_row(job_id)
    assert row is not None and row["state"] == "finished"
    assert [c[3] for c in a.owed_callbacks()] == ["on_finished"]


def test_a_statement_on_a_session_the_server_ended_is_an_outage_and_the_next_connects_again(pg_url: str) -> None:
    """Single statements share the connection's kept cursor: a session the
    server ended is one StoreUnavailable (an outage, not a traceback), and
    the next call runs on a new connection and cursor."""
    a = master(pg_url, "a")
    job_id, _ = a.submit("m:f", "null", "k")
    pid = a.connect().info.backend_pid
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreUnavailable, match="PostgreSQL store"):
        a.job_row(job_id)
    row = a.job_row(job_id)
    assert row is not None and row["key"] == "k" and a.connect().info.backend_pid != pid


def test_one_final_and_several_are_held(pg_url: str) -> None:
    """hold_finals: one final is a plain statement, several one executemany; each is kept."""
    a = master(pg_url, "a")
    for key in ("one", "two", "three"):
        a.submit("m:f", "null", key)
    attempts = [a.claim(1, 10 + i, None)[1] for i in range(3)]  # type: ignore[index]
    a.hold_finals([(attempts[0], '{"result":1}')])
    a.hold_finals([(attempts[1], '{"result":2}'), (attempts[2], '{"result":3}')])
    assert {o.attempt_id: o.final for o in a.open_attempts()} == {
        attempts[0]: '{"result":1}', attempts[1]: '{"result":2}', attempts[2]: '{"result":3}'}


def test_recovery_fences_the_dead_masters_late_outcome(pg_url: str) -> None:
    a, b = master(pg_url, "a"), master(pg_url, "b")
    job_id, _ = a.submit("m:f", "null", "k")
    _job, first = a.claim(1, 10, None)  # type: ignore[misc]
    assert b.recover(5.0, lost_job) == []  # a's lease is live: nothing to take
    expire(pg_url, "a")
    assert b.recover(5.0, lost_job) == []
    assert b.last_recovery == (["a"], 1)
    assert b.recover(5.0, lost_job) == [] and b.last_recovery == ([], 0)  # taken once
    row = b.job_row(job_id)
    assert row is not None and (row["state"], row["failures"]) == ("pending", 1)
    _job, second = b.claim(1, 20, None)  # type: ignore[misc]
    # a comes back with the outcome of its attempt: kept on the attempt, not on the job
    assert a.end_attempt(first, job_id, outcome="finished", reason=None, error=None, result_json='"old"',
                         max_rss_kb=None, job_state="finished", counts_as_failure=False, callback="on_finished",
                         attempt_n=1) == (False, None)
    assert a.renew_lease("running", 2, 0) is False  # and learns that its lease was recovered
    assert b.end_attempt(second, job_id, outcome="finished", reason=None, error=None, result_json='"new"',
                         max_rss_kb=None, job_state="finished", counts_as_failure=False, callback="on_finished",
                         attempt_n=2)[0]
    attempts = b.attempts_of(job_id)
    assert [(x["master"], x["state"], x["outcome"], x["late_outcome"]) for x in attempts] == [
        ("a", "late", "lost", "finished"), ("b", "ended", "finished", None)]
    assert attempts[0]["reason"] == RECOVERED_REASON
    row = b.job_row(job_id)
    assert row is not None and json.loads(row["result"]) == "new"
    assert len(b.owed_callbacks()) == 1  # one callback, for the recorded outcome
    assert a.register_master(os.getpid(), 2, time.time(), 2, "app") == 2  # a joins again under a new epoch


def test_a_job_out_of_retries_fails_on_recovery_with_its_callback_owed_by_the_recoverer(pg_url: str) -> None:
    a, b = master(pg_url, "a"), master(pg_url, "b")
    job_id, _ = a.submit("m:f", "null", "k")
    a.claim(1, 10, None)
    expire(pg_url, "a")
    [(callback_id, owed_job, attempt, kind)] = b.recover(5.0, failed_job)
    assert (owed_job, attempt, kind) == (job_id, 1, "on_failed")
    assert b.owed_callbacks() == [(callback_id, job_id, 1, "on_failed")]
    assert a.owed_callbacks() == []  # b owns it: it runs on one master only


def test_a_dead_masters_owed_callback_is_taken_by_a_live_one(pg_url: str) -> None:
    a, b = master(pg_url, "a"), master(pg_url, "b")
    job_id, _ = a.submit("m:f", "null", "k")
    _job, attempt = a.claim(1, 10, None)  # type: ignore[misc]
    a.end_attempt(attempt, job_id, outcome="finished", reason=None, error=None, result_json="1", max_rss_kb=None,
                  job_state="finished", counts_as_failure=False, callback="on_finished", attempt_n=1)
    assert b.owed_callbacks() == []  # a's, while a lives
    expire(pg_url, "a")
    assert [c[1] for c in b.owed_callbacks()] == [job_id]
    assert a.owed_callbacks() == []


def test_concurrent_claims_never_take_the_same_job(pg_url: str) -> None:
    stores = [master(pg_url, f"m{i}") for i in range(3)]
    stores[0].submit_many([("m:f", str(i), f"k{i}") for i in range(60)])
    script = (
        "import sys, time, os\n"
        "from phoenix.store.postgres import PgStore\n"
        "s = PgStore(sys.argv[1], node=sys.argv[2]); s.epoch = 1\n"
        "got = []\n"
        "while (c := s.claim(1, os.getpid(), None)) is not None: got.append(c[0].key)\n"
        "print(' '.join(got))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, pg_url, f"m{i}"], stdout=subprocess.PIPE, text=True,
                              cwd=REPO) for i in range(3)]
    taken = [key for p in procs for key in p.communicate(timeout=60)[0].split()]
    assert sorted(taken) == sorted(f"k{i}" for i in range(60))  # each once


def test_one_notify_per_submitting_transaction(pg_url: str) -> None:
    listener = psycopg.connect(pg_url, autocommit=True)
    try:
        listener.execute("LISTEN phoenix_wake")
        store = PgStore(pg_url)
        store.submit_many([("m:f", str(i), f"k{i}") for i in range(50)])
        store.submit("m:f", "null", "one")
        store.submit("m:f", "null", "one")  # the same job again: nothing new, no wake-up
        payloads = [n.payload for n in listener.notifies(timeout=0.5, stop_after=5)]
        assert payloads == ["", ""]
    finally:
        listener.close()


def test_a_stopping_master_wakes_the_others_for_the_jobs_it_interrupted(pg_url: str) -> None:
    """Its interrupted jobs are pending at once (a rolling update's new pod
    should take them then, not at its next look, up to ttl/3 later); a master
    that leaves its children running for its node's next master wakes no one."""
    listener = psycopg.connect(pg_url, autocommit=True)
    try:
        listener.execute("LISTEN phoenix_wake")
        master(pg_url, "leaving").release_lease("left")
        master(pg_url, "stopping").release_lease("stopped")
        payloads = [n.payload for n in listener.notifies(timeout=0.5, stop_after=5)]
        assert payloads == [""]
    finally:
        listener.close()


def test_schema_versions(postgres_server: Any) -> None:
    url = postgres_server.database(migrated=False)
    try:
        with pytest.raises(Exception, match="phoenix store migrate --store URL"):
            PgStore(url)
        result = phoenix_cli("status", "--store", url)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "no Phoenix schema yet: create it with `phoenix store migrate --store URL`" in result.stderr
        result = phoenix_cli("store", "migrate", "--store", url)
        assert result.returncode == 0 and "created" in result.stdout, result.stderr
        assert migrate(url) == (SCHEMA_VERSION, SCHEMA_VERSION)  # again: up to date
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE phoenix_schema SET version = 99")
        result = phoenix_cli("start", "tests.apps.jobs:app", "--store", url, "--state-dir", "/tmp/unused-pg-state")
        assert result.returncode == 2 and "schema version 99, newer than this Phoenix reads" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        postgres_server.drop(url)


def test_migrate_refuses_while_a_master_of_the_older_schema_runs(postgres_server: Any) -> None:
    """An outside check: migrated under live masters of the older release,
    they took batch callbacks and ran them as on_failed."""
    url = postgres_server.database()
    try:
        old = master(url, "old")  # registered while the schema was the one it knows
        frozen = master(url, "frozen")
        job_id, _ = frozen.submit("m:f", "null", "running-on-frozen")
        assert frozen.claim(1, 10, None) is not None
        expire(url, "frozen")  # its lease lapsed unrenewed: a VM paused, say, not stopped
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE phoenix_schema SET version = %s", (SCHEMA_VERSION - 1,))
        result = phoenix_cli("store", "migrate", "--store", url)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "1 master(s) of an older Phoenix run on this store ('old')" in result.stderr
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT version FROM phoenix_schema").fetchone() == (SCHEMA_VERSION - 1,)
        old.release_lease("stopped")
        old.close()
        result = phoenix_cli("store", "migrate", "--store", url)
        assert result.returncode == 0 and f"upgraded from {SCHEMA_VERSION - 1}" in result.stdout, result.stderr
        # Woken, it is fenced: its epoch moved on, so its renewal (and any claim or outcome) is refused.
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT epoch FROM masters WHERE node = 'frozen'").fetchone() == (frozen.epoch + 1,)
            # Its job runs again (no master of the old release may recover it now, and an outside check saw it
            # stay `running` for good once the frozen master woke and registered again).
            assert conn.execute("SELECT state, failures FROM jobs WHERE id = %s", (job_id,)).fetchone() == (
                "pending", 0)
            assert conn.execute("SELECT outcome FROM attempts WHERE job_id = %s", (job_id,)).fetchone() == ("lost",)
        frozen.close()
    finally:
        postgres_server.drop(url)


@pytest.mark.parametrize("url, message", [
    ("postgresql://nobody@127.0.0.1:1/nothing", "cannot connect to the PostgreSQL store"),
    ("mysql://x", 'store must be "sqlite" or a postgresql:// URL'),
])
def test_bad_store_urls_are_one_line(url: str, message: str, tmp_path: Any) -> None:
    start = ["start", "tests.apps.jobs:app", "--state-dir", str(tmp_path / "state")]
    for args in (["status", "--json"], ["submit", "m:f", "null"], ["store", "migrate"], start):
        result = phoenix_cli(*args, "--store", url)
        assert result.returncode in (1, 2) and message in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_the_sqlite_path_never_imports_psycopg() -> None:
    code = ("import sys, phoenix, phoenix.cli.main, phoenix.master.arbiter, phoenix.client, phoenix.store.base\n"
            "assert 'psycopg' not in sys.modules, 'psycopg imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_operators_commands_work_on_the_shared_store(pg_url: str) -> None:
    a = master(pg_url, "a")
    job_id, _ = a.submit("m:f", "null", "broken")
    a.submit("m:f", "1", "waiting")
    _job, attempt = a.claim(1, 10, None)  # type: ignore[misc]
    a.end_attempt(attempt, job_id, outcome="error", reason=None, error="boom", result_json=None, max_rss_kb=None,
                  job_state="failed", counts_as_failure=True, callback=None, attempt_n=1)
    listed = json.loads(phoenix_cli("jobs", "--json", "--store", pg_url).stdout)
    assert sorted(j["key"] for j in listed["jobs"]) == ["broken", "waiting"]
    shown = json.loads(phoenix_cli("show", "broken", "--json", "--store", pg_url).stdout)
    assert [(x["n"], x["node"], x["outcome"]) for x in shown["attempt_list"]] == [(1, "a", "error")]
    result = phoenix_cli("retry", "broken", "--store", pg_url)
    assert result.returncode == 0 and json.loads(result.stdout) == {"retried": ["broken"]}, result.stderr
    assert a.claim(1, 11, None) is not None
    result = phoenix_cli("prune", "--finished-before", "0s", "--json", "--store", pg_url)
    assert result.returncode == 0, result.stderr


def test_report_draws_the_shared_stores_timeline(pg_url: str, tmp_path: Any) -> None:
    """`phoenix report --store URL`: the PostgreSQL store has the timeline reads, so the page is drawn from it
    (it was refused for want of a state directory's journal)."""
    a = master(pg_url, "a")
    a.record_event("master_start", 1, os.getpid(), "app")
    for key, outcome, state in (("done", "finished", "finished"), ("broken", "error", "failed")):
        job_id, _ = a.submit("m:f", json.dumps(key), key)
        _job, attempt = a.claim(1, 10, None)  # type: ignore[misc]
        a.end_attempt(attempt, job_id, outcome=outcome, reason=None, error=None, result_json=None, max_rss_kb=None,
                      job_state=state, counts_as_failure=outcome != "finished", callback=None, attempt_n=1)
    a.submit("m:f", "null", "waiting")
    page = tmp_path / "timeline.html"
    result = phoenix_cli("report", "--html", str(page), "--store", pg_url, "--state-dir", str(tmp_path / "none"))
    assert result.returncode == 0 and result.stdout.strip() == f"wrote {page}: 2 attempts", result.stderr
    text = page.read_text()
    assert 'data-job="done" data-attempt="1"' in text and 'data-job="broken" data-attempt="1"' in text
    assert 'class="marker marker-master_start"' in text
    assert not (tmp_path / "none").exists()  # nothing made in a state directory the shared store does not use


def test_a_stopped_master_is_recovered_only_if_it_left_an_attempt_open(pg_url: str) -> None:
    a, b, c = master(pg_url, "a"), master(pg_url, "b"), master(pg_url, "c")
    a.submit("m:f", "null", "k")
    a.claim(1, 10, None)
    for stopped in (a, c):
        stopped.release_lease("stopped")  # a's outcome could not be written before it exited
        expire(pg_url, stopped.node)
    b.recover(5.0, lost_job)
    assert b.last_recovery == (["a"], 1)
    masters = {m["node"]: m["state"] for m in b.masters()}
    assert masters == {"a": "lost", "b": "running", "c": "stopped"}


def test_a_degraded_masters_reason_is_in_its_row_for_those_who_read_the_store(pg_url: str) -> None:
    """The dashboard reads the store, never a master's loop: the reason a master is degraded is there."""
    a, b = master(pg_url, "a"), master(pg_url, "b")
    a.set_meta(state="degraded", degraded_reason="ImportError: boom <b>")
    b.set_meta(state="running", degraded_reason=None)
    assert {m["node"]: m["degraded_reason"] for m in b.masters()} == {"a": "ImportError: boom <b>", "b": None}
