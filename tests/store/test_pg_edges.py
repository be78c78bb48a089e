"""The shared store's edges: a node name two masters share, a claim whose
reply is lost after its commit, the claim's due test through the index, a
callback owed by a master whose lease was taken over, a schema bumped or
downgraded under the masters, a session that lost Phoenix's settings (a
pooler in transaction mode), and the outage budget the lease allows."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import Master, phoenix_cli, wait_for
from tests.store.test_pg_masters import attempts, jobs_by_key, shared_master

psycopg = pytest.importorskip("psycopg")


# -- one node name, two masters ---------------------------------------------------------------


def test_a_second_master_under_a_node_name_held_by_a_live_lease_is_refused(tmp_path: Path, pg_url: str) -> None:
    first = shared_master(tmp_path, "first", pg_url, "--node", "web").start()
    try:
        from phoenix import Client

        Client(store=pg_url).submit("tests.apps.jobs:sleep", {"s": 60}, key="held")
        pid = wait_for(lambda: jobs_by_key(pg_url)["held"]["pid"], what="the job to start on the first master")
        # Another state directory (another container with the same host name), the same node name.
        second = Master(tmp_path / "second", "tests.apps.jobs:app", "--store", pg_url, "--lease-ttl", "2",
                        "--node", "web", log_dir=tmp_path).start(wait_ready=False)
        try:
            code = second.wait_exit()
        finally:
            second.stop()
        errors = [line for line in second.log().splitlines() if line.strip()]
        assert code == 2, second.log()
        assert len(errors) == 1 and "'web'" in errors[0] and "--node" in errors[0], errors
        assert "Traceback" not in second.log()
        # A copy of the first's state directory, its node-id file with it (a cloned volume, an image
        # built with the state directory inside) is another directory too: before, it took the
        # node as its own and killed the first master's children as silent.
        copy = tmp_path / "copy"
        copy.mkdir(mode=0o700)
        (copy / "node-id").write_bytes((tmp_path / "first" / "node-id").read_bytes())
        third = Master(copy, "tests.apps.jobs:app", "--store", pg_url, "--lease-ttl", "2",
                       "--node", "web", log_dir=tmp_path).start(wait_ready=False)
        try:
            assert third.wait_exit() == 2, third.log()
        finally:
            third.stop()
        [attempt] = attempts(pg_url, "held")  # the first master's attempt is untouched, its child alive
        assert attempt["outcome"] is None and attempt["pid"] == pid and Path(f"/proc/{pid}").exists()
    finally:
        first.stop()
    # The first master restarted from its own state directory is the same node: accepted.
    again = shared_master(tmp_path, "first", pg_url, "--node", "web").start()
    again.stop()


def test_a_node_name_whose_old_master_is_gone_past_the_grace_can_be_taken(pg_url: str, tmp_path: Path) -> None:
    from phoenix.store.base import NodeTaken
    from phoenix.store.postgres import PgStore

    with PgStore(pg_url, node="web", lease_ttl=1) as old, PgStore(pg_url, node="web", lease_ttl=1) as new:
        epoch = old.register_master(1, 1, time.time(), 2, None, instance="old", grace=0.5)
        with pytest.raises(NodeTaken, match="'web'"):
            new.register_master(2, 1, time.time(), 2, None, instance="new", grace=0.5)
        wait_for(lambda: _expired_for(pg_url, "web") > 0.6, what="the old lease to expire past the grace")
        taken = new.register_master(2, 1, time.time(), 2, None, instance="new", grace=0.5)
        assert taken == epoch + 1  # the old master is fenced: its renewal fails, its outcomes are late
        assert old.renew_lease("running", 2, 0) is False


def _expired_for(url: str, node: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT extract(epoch from now() - lease_expires_at) FROM masters WHERE node = %s",
                           (node,)).fetchone()
    return float(row[0])


# -- a claim whose reply is lost after its commit ---------------------------------------------


class ReplyCutter:
    """A TCP proxy to the test server's Unix socket that, once armed with a
    byte string, swallows the first reply from the server containing it and
    breaks that connection: the statement committed, its reply never came."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        host = parse_qs(parts.query)["host"][0]
        self.upstream = os.path.join(host, f".s.PGSQL.{parts.port or 5432}")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = parts._replace(netloc=f"{parts.username}:@127.0.0.1:{self.listener.getsockname()[1]}",
                                  query="").geturl()
        self.pattern: bytes | None = None
        self.cut = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.upstream)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self.pattern is not None and self.pattern in data:
                    self.pattern = None
                    self.cut.set()
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def cutter(pg_url: str) -> Iterator[ReplyCutter]:
    proxy = ReplyCutter(pg_url)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_claim_committed_whose_reply_was_lost_is_reconciled_at_once(
        tmp_path: Path, pg_url: str, cutter: ReplyCutter) -> None:
    a = shared_master(tmp_path, "a", cutter.url, "--lease-ttl", "10").start()
    try:
        from phoenix import Client

        cutter.pattern = b"reply-lost-job"  # the claim's reply carries the job's key
        Client(store=pg_url).submit("tests.apps.jobs:sleep", {"s": 0.2}, key="reply-lost-job")
        assert cutter.cut.wait(15), "the claim's reply never passed the proxy"
        wait_for(lambda: jobs_by_key(pg_url)["reply-lost-job"]["state"] == "finished", timeout=15,
                 what="the job, claimed without the master knowing, to be re-queued and run")
        first, second = attempts(pg_url, "reply-lost-job")
        assert (first["outcome"], second["outcome"]) == ("interrupted", "finished")
        assert "never confirmed" in first["reason"] and "never started" in first["reason"]
        a.wait_log("journal_recovered")
        assert a.proc is not None and a.proc.poll() is None
    finally:
        a.stop()


# -- the claim's due test ---------------------------------------------------------------------


def test_the_claim_finds_due_jobs_through_the_index_condition(pg_url: str) -> None:
    from phoenix.store.postgres import _CLAIM

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO jobs (key, target, params, state, not_before, created_at, updated_at) "
                     "SELECT 'later-' || i, 'm:f', '{}', 'pending', extract(epoch from now()) + 3600, 0, 0 "
                     "FROM generate_series(1, 20000) AS i")
        conn.execute("INSERT INTO masters (node, pid, generation, state, lease_expires_at, started_at) "
                     "VALUES ('n', 1, 1, 'running', now() + interval '1 minute', 0)")
        conn.execute("ANALYZE jobs")
        args = {"node": "n", "epoch": 1, "generation": 1, "pid": 1, "start_time": 1, "since_boot": 1.0}
        plan = json.dumps(conn.execute("EXPLAIN (FORMAT JSON) " + _CLAIM, args).fetchone()[0])
        started = time.monotonic()
        assert conn.execute(_CLAIM, args).fetchone() is None  # nothing due
        took = time.monotonic() - started
    assert "not_before <=" in "".join(c for c in _index_conditions(json.loads(plan))), plan
    assert took < 0.5


def _index_conditions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "Index Cond" in node:
            yield node["Index Cond"]
        for value in node.values():
            yield from _index_conditions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _index_conditions(value)


def test_updates_of_jobs_reserve_no_room_for_hot_updates_that_cannot_happen(pg_url: str) -> None:
    """Every update of a job changes `state`, which jobs_pending's predicate
    reads: no update of jobs can be HOT, so none is reserved for."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'jobs'").fetchone()
        predicate = conn.execute("SELECT pg_get_expr(indpred, indrelid) FROM pg_index "
                                 "WHERE indexrelid = 'jobs_pending'::regclass").fetchone()
    assert row[0] is None
    assert "state" in predicate[0]


# -- callbacks are fenced like outcomes ------------------------------------------------------


def test_a_callback_taken_over_from_a_lapsed_lease_is_neither_started_nor_marked_by_its_old_owner(
        pg_url: str) -> None:
    from phoenix.store.postgres import PgStore

    with PgStore(pg_url, node="cut-off", lease_ttl=1) as old, PgStore(pg_url, node="other", lease_ttl=30) as other:
        old.register_master(1, 1, time.time(), 1, None, instance="a")
        other.register_master(2, 1, time.time(), 1, None, instance="b")
        job_id, _ = old.submit("m:f", "{}", "owed")
        claimed = old.claim(1, 1, 1)
        assert claimed is not None
        recorded, callback_id = old.end_attempt(
            claimed[1], job_id, outcome="finished", reason=None, error=None, result_json="1", max_rss_kb=None,
            job_state="finished", counts_as_failure=False, callback="on_finished", attempt_n=1)
        assert recorded and callback_id is not None
        wait_for(lambda: _expired_for(pg_url, "cut-off") > 0.2, what="the old owner's lease to lapse")
        assert [c[0] for c in other.owed_callbacks(grace=0.1)] == [callback_id]  # taken over
        assert old.callback_started(callback_id) is False  # the old owner must not run it now
        assert old.start_callback(callback_id, job_id, 1) is None  # (the same fence, with the job's read)
        assert old.callback_done(callback_id, None) is False  # nor mark it done for the new owner
        assert old.callbacks_done([(callback_id, None)]) == [False]  # (grouped: each fenced the same)
        assert other.callback_started(callback_id) is True
        started = other.start_callback(callback_id, job_id, 1)
        assert started is not None and started[0]["key"] == "owed"
        assert other.callback_done(callback_id, None) is True
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert conn.execute("SELECT runs, state, owner FROM callbacks").fetchall() == [(2, "done", "other")]


def test_an_outcome_counts_its_callbacks_start_under_the_lease_and_the_start_sends_nothing_more(pg_url: str) -> None:
    """end_attempt(start_callback=True): the callback's run is counted in the
    outcome's own statement (one round trip fewer per callback), fenced as
    callback_started: with the lease live, start_callback hands the job's row
    and counts nothing again; with it lapsed, nothing is counted and the start
    is refused (the master that takes the callback over runs it)."""
    from phoenix.store.postgres import PgStore

    def finish(store: PgStore, key: str) -> tuple[int, int]:
        job_id, _ = store.submit("m:f", '{"p":1}', key)
        claimed = store.claim(1, 1, 1)
        assert claimed is not None
        recorded, callback_id = store.end_attempt(
            claimed[1], job_id, outcome="finished", reason="its reason", error=None, result_json='{"r":2}',
            max_rss_kb=4096, job_state="finished", counts_as_failure=False, callback="on_finished", attempt_n=1,
            start_callback=True)
        assert recorded and callback_id is not None
        return job_id, callback_id

    def runs(callback_id: int) -> int:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            row = conn.execute("SELECT runs FROM callbacks WHERE id = %s", (callback_id,)).fetchone()
        assert row is not None
        return int(row[0])

    with PgStore(pg_url, node="live", lease_ttl=30) as live:
        live.register_master(1, 1, time.time(), 1, None, instance="a")
        job_id, callback_id = finish(live, "live")
        assert runs(callback_id) == 1  # counted by the outcome
        started = live.start_callback(callback_id, job_id, 1)
        assert started is not None
        row, reason, max_rss_kb = started
        assert row == live.job_row(job_id) and (reason, max_rss_kb) == ("its reason", 4096)
        assert runs(callback_id) == 1  # the start sent no statement of its own
        assert live.callback_done(callback_id, None) is True
    with PgStore(pg_url, node="lapsed", lease_ttl=1) as lapsed:
        lapsed.register_master(2, 1, time.time(), 1, None, instance="b")
        lapsed.submit("m:f", "{}", "lapsed")
        claimed = lapsed.claim(1, 1, 1)  # while the lease was live; its outcome comes after it lapsed
        assert claimed is not None
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE masters SET lease_expires_at = now() - interval '1 second' WHERE node = 'lapsed'")
        recorded, callback_id = lapsed.end_attempt(
            claimed[1], claimed[0].id, outcome="finished", reason=None, error=None, result_json="1", max_rss_kb=None,
            job_state="finished", counts_as_failure=False, callback="on_finished", attempt_n=1, start_callback=True)
        assert recorded and callback_id is not None  # the outcome is its epoch's: recorded
        assert runs(callback_id) == 0  # but the lease is not live: no run counted
        assert lapsed.start_callback(callback_id, claimed[0].id, 1) is None  # nor started


# -- the schema, under the masters and by `store migrate` -----------------------------------


def test_a_schema_bumped_under_a_running_master_is_an_outage_not_a_crash(tmp_path: Path, pg_url: str) -> None:
    a = shared_master(tmp_path, "a", pg_url, "--lease-ttl", "10").start()
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE phoenix_schema SET version = version + 1")
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'phoenix' AND datname = current_database()")
        a.wait_log("newer than this Phoenix reads", timeout=15)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE phoenix_schema SET version = version - 1")
        a.wait_log("journal_recovered", timeout=15)
        assert a.proc is not None and a.proc.poll() is None
        assert "Traceback" not in a.log() and " crash" not in a.log()
        from phoenix import Client

        Client(store=pg_url).submit("tests.apps.jobs:noop", {}, key="after")
        wait_for(lambda: jobs_by_key(pg_url)["after"]["state"] == "finished", what="jobs to run again")
    finally:
        a.stop()


def _as_version_1(url: str) -> None:
    """The schema as Phoenix's first version made it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE masters DROP COLUMN IF EXISTS instance, DROP COLUMN IF EXISTS outage_budget")
        conn.execute("ALTER TABLE callbacks DROP COLUMN IF EXISTS owner_epoch")
        conn.execute("ALTER TABLE jobs SET (fillfactor = 80)")
        # (version 3's columns; their indexes go with them)
        conn.execute("ALTER TABLE jobs DROP COLUMN priority, DROP COLUMN due_at, DROP COLUMN run_at, DROP COLUMN tick")
        conn.execute("ALTER TABLE jobs DROP COLUMN checkpoint, DROP COLUMN checkpoint_at, "
                     "DROP COLUMN checkpoint_attempt, DROP COLUMN checkpoint_seq")
        conn.execute("ALTER TABLE attempts DROP COLUMN progress")
        conn.execute("UPDATE phoenix_schema SET version = 1")


def test_store_migrate_upgrades_an_older_schema_for_real(pg_url: str) -> None:
    from phoenix.store.postgres import SCHEMA_VERSION

    _as_version_1(pg_url)
    result = phoenix_cli("store", "migrate", "--store", pg_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"schema version {SCHEMA_VERSION}: upgraded from 1"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        columns = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                              "WHERE table_name IN ('masters', 'callbacks', 'jobs', 'attempts')")}
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'jobs'")}
        version = conn.execute("SELECT version FROM phoenix_schema").fetchall()
    assert {"instance", "outage_budget", "owner_epoch", "priority", "due_at", "run_at", "tick"} <= columns
    assert {"checkpoint", "checkpoint_seq", "progress"} <= columns
    assert {"jobs_ready", "jobs_scheduled", "jobs_ticks"} <= indexes
    assert version == [(SCHEMA_VERSION,)]
    assert phoenix_cli("store", "migrate", "--store", pg_url).stdout.strip().endswith("up to date")


def test_store_migrate_refuses_a_version_no_phoenix_wrote(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE phoenix_schema SET version = 0")
    result = phoenix_cli("store", "migrate", "--store", pg_url)
    assert result.returncode == 2, result.stdout
    assert "version 0" in result.stderr and "nothing was changed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM phoenix_schema").fetchall() == [(0,)]


# -- a pooler in transaction mode -----------------------------------------------------------


def test_a_session_that_does_not_keep_phoenix_settings_is_refused_with_the_reason(pg_url: str) -> None:
    """What a pooler in transaction mode that ignores `options` looks like:
    the next statement runs in a session without Phoenix's timeouts."""
    from phoenix.store.base import JournalError
    from phoenix.store.postgres import check_session, connect

    conn = connect(pg_url)  # Phoenix's own: accepted
    try:
        conn.execute("SET statement_timeout = 0")
        with pytest.raises(JournalError, match="pool_mode = transaction"):
            check_session(conn)
    finally:
        conn.close()


# -- the outage budget ----------------------------------------------------------------------


def test_the_outage_budget_is_what_the_renewals_allow_and_status_says_it(tmp_path: Path, pg_url: str) -> None:
    from phoenix.rules.leases import lease_times

    times = lease_times(30, 5)
    assert times.outage_budget == pytest.approx(30 - 10 - 2 - 1)  # not the ttl: a renewal may be a period old
    a = shared_master(tmp_path, "a", pg_url, "--lease-ttl", "6").start()
    try:
        result = phoenix_cli("status", "--json", "--store", pg_url)
        [master] = json.loads(result.stdout)["masters"]
        assert master["outage_budget"] == pytest.approx(lease_times(6, 1).outage_budget)
        text = phoenix_cli("status", "--store", pg_url).stdout
        assert f"outage budget {lease_times(6, 1).outage_budget:.1f}s" in text
    finally:
        a.stop()



class _Master:
    """What a LeaseKeeper asks of its master, recorded."""

    def __init__(self) -> None:
        self.slots = 1
        self.taken: list[str] = []

    def node_taken(self, why: str) -> None:
        self.taken.append(why)

    def lease_state(self) -> str:
        return "running"


def test_a_master_whose_node_another_took_while_it_was_away_stops_instead_of_sharing_it(
        tmp_path: Path, pg_url: str) -> None:
    from phoenix.app import App
    from phoenix.config import Config
    from phoenix.master.leasekeeper import LeaseKeeper
    from phoenix.master.loop import Loop
    from phoenix.master.specs import JobSpecs
    from phoenix.rules.policy import RestartBudget
    from phoenix.store.postgres import PgStore
    from phoenix.testing import FakeClock

    (tmp_path / "away").mkdir(mode=0o700)
    config = Config(state_dir=str(tmp_path / "away"), lease_ttl=1.0, kill_grace=0.1)
    host, loop, budget = _Master(), Loop(FakeClock()), RestartBudget(10, 1.0)
    loop.open()
    with PgStore(pg_url, node="web", lease_ttl=1.0) as store, PgStore(pg_url, node="web", lease_ttl=30) as other:
        keeper = LeaseKeeper(host, lambda why: None, store, lambda: config, JobSpecs(App("t"), lambda: config), {},
                             loop, lambda: budget, lambda: False, lambda: None, lambda: None)
        keeper.register(os.getpid(), 1, time.time(), None)
        wait_for(lambda: _expired_for(pg_url, "web") > keeper.times.grace + 0.1, what="the lease to lapse")
        other.register_master(2, 1, time.time(), 1, None, instance="elsewhere", grace=keeper.times.grace)
        keeper.renew()  # finds its epoch moved on, and the node held by the other instance
        keeper.close_listener()
    assert len(host.taken) == 1 and "'web'" in host.taken[0] and "--node" in host.taken[0]
    assert keeper.next_renewal == float("inf")  # it does not try to take the name back
