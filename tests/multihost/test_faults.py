"""The multi-host fault suite: three Phoenix masters in three network
namespaces share one PostgreSQL on their bridge (lease ttl 3 s, 2 slots
each). Each scenario injects one fault, waits for every job to end, then
checks the invariants of invariants.py from the tables and from what the
job bodies and callbacks wrote."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from phoenix.rules.leases import lease_times
from tests.driver import PYTHON, REPO, wait_for
from tests.multihost import invariants
from tests.multihost.cluster import TICK, Cluster
from tests.multihost.netlab import Lab, netem_unsupported

TTL = 3.0
KILL_GRACE = 1.0  # tests/multihost/app.py
TIMES = lease_times(TTL, KILL_GRACE)
# Recovery runs every few seconds on each live master: allow one period and scheduling on a loaded machine.
RECOVERY_SLACK = 4.0


@pytest.fixture
def cluster(lab: Lab, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(lab, tmp_path, ttl=TTL)
    try:
        yield c
    finally:
        c.stop()


def keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


@pytest.mark.multihost_long
def test_jobs_spread_over_hosts_and_each_ends_once(cluster: Cluster) -> None:
    cluster.start()
    work = keys("job", 12)
    cluster.submit(work, 0.3)
    cluster.wait_final(work)
    cluster.wait_quiet()
    summary = invariants.check(cluster, work)
    assert summary.attempts == 12 and summary.lost == 0
    assert len(summary.by_node) >= 2, summary.by_node  # more than one host took jobs


def test_lost_host_jobs_rerun_elsewhere_within_ttl_plus_grace(cluster: Cluster) -> None:
    lab = cluster.lab
    cluster.start()
    work = keys("long", 6)
    cluster.submit(work, 4.0, rerun=0.3)
    running = cluster.wait_running({"h1": 2, "h2": 2, "h3": 2})
    lost_at = cluster.now()
    lab.lose(lab.host("h1"))
    cluster.wait_final(work, timeout=30)
    cluster.wait_quiet()
    summary = invariants.check(cluster, work)
    delays = invariants.recovery_delays(cluster, running["h1"], "h1", lost_at)
    limit = TIMES.recovery_after + RECOVERY_SLACK
    assert delays and all(d is not None and d <= limit for d in delays.values()), (delays, limit)
    assert summary.lost == 2  # h1's two attempts, ended by recovery, none of the others


def test_a_second_host_under_a_node_name_in_use_is_refused_and_takes_nothing(cluster: Cluster) -> None:
    """Two containers with one host name (here: --node given twice): the second
    master is refused with one line; the first one's jobs run once, untouched."""
    lab = cluster.lab
    cluster.start([lab.host("h1")])
    work = keys("held", 2)
    cluster.submit(work, 4.0)
    cluster.wait_running({"h1": 2})
    twin = cluster.master(lab.host("h2"), "--node", "h1").start(wait_ready=False)
    assert twin.wait_exit() == 2, twin.log()
    assert "node 'h1' is held by another master" in twin.log() and "--node" in twin.log()
    cluster.wait_final(work, timeout=30)
    cluster.wait_quiet()
    summary = invariants.check(cluster, work)
    assert summary.lost == 0 and all(len(cluster.attempts(k)) == 1 for k in work)


def test_silent_partition_ends_the_cut_off_hosts_children_before_the_rerun_then_heals(cluster: Cluster) -> None:
    lab = cluster.lab
    h1 = lab.host("h1")
    cluster.start()
    work = keys("cut", 6)
    cluster.submit(work, 6.0, rerun=0.3)
    running = cluster.wait_running({"h1": 2, "h2": 2, "h3": 2})
    lab.partition(h1)
    cluster.masters["h1"].wait_log("lease_lapsed", timeout=TTL + 5)
    # h1's jobs run again elsewhere; h1 ended its children first (no overlap: checked below from their ticks).
    wait_for(lambda: all(len(cluster.attempts(k)) == 2 for k in running["h1"]), TIMES.recovery_after + 10,
             "h1's jobs to start again elsewhere")
    lab.heal(h1)
    cluster.masters["h1"].wait_log("lease_lost", timeout=15)
    cluster.wait_final(work, timeout=30)
    # Healed, h1 takes a fresh lease and work again.
    more = keys("after", 6)
    cluster.submit(more, 0.2)
    cluster.wait_final(more)
    cluster.wait_quiet()
    summary = invariants.check(cluster, work + more)
    assert summary.lost == 2
    assert cluster.sql("SELECT state FROM masters WHERE node = 'h1'")[0][0] == "running"


def test_master_frozen_past_its_lease_is_fenced_when_it_wakes(cluster: Cluster) -> None:
    lab = cluster.lab
    cluster.start()
    work = keys("frozen", 6)
    cluster.submit(work, 8.0, rerun=0.3)
    running = cluster.wait_running({"h1": 2, "h2": 2, "h3": 2})
    h1 = cluster.masters["h1"]
    lab.freeze(h1.pid)
    try:
        wait_for(lambda: all(len(cluster.attempts(k)) == 2 for k in running["h1"]), TIMES.recovery_after + 10,
                 "the frozen host's jobs to start again elsewhere")
    finally:
        lab.thaw(h1.pid)
    h1.wait_log("lease_lost", timeout=15)
    cluster.wait_final(work, timeout=40)
    cluster.wait_quiet()
    # Its children ran on while it was frozen: the one overlap docs/many-hosts.md admits (frozen > ttl + grace).
    summary = invariants.check(cluster, work, overlap_allowed=True)
    assert all(k.split(":")[0] in running["h1"] for k in summary.overlaps), summary.overlaps
    for key in running["h1"]:
        first, second = cluster.attempts(key)[:2]
        assert first["master"] == "h1" and first["state"] in ("lost", "late")
        assert second["master"] != "h1"
    # No result of h1's fenced attempts was recorded, and none called back.
    assert not [c for c in cluster.callbacks() if c["key"] in running["h1"] and c["attempt"] == 1]


@pytest.mark.parametrize("mode", ["fast", pytest.param("kill", marks=pytest.mark.multihost_long)])
def test_postgres_restart_kills_no_running_job(cluster: Cluster, mode: str) -> None:
    cluster.start()
    work = keys("pg", 6)
    cluster.submit(work, 4.0)
    cluster.wait_running({"h1": 2, "h2": 2, "h3": 2})
    cluster.lab.pg.restart(mode)
    cluster.wait_final(work, timeout=30)
    more = keys("after", 6)  # the masters claim again after the restart
    cluster.submit(more, 0.1)
    cluster.wait_final(more, timeout=20)
    cluster.wait_quiet()
    summary = invariants.check(cluster, work + more)
    assert summary.lost == 0 and summary.attempts == 12  # a short outage re-ran nothing


def test_terminated_sessions_are_reopened_and_kill_no_running_job(cluster: Cluster) -> None:
    cluster.start()
    work = keys("term", 6)
    cluster.submit(work, 3.0)
    cluster.wait_running({"h1": 2, "h2": 2, "h3": 2})
    assert cluster.lab.terminate_sessions() >= 3
    cluster.wait_final(work, timeout=30)
    assert cluster.lab.terminate_sessions() >= 3  # idle now: listeners included
    more = keys("after", 6)
    cluster.submit(more, 0.1)
    cluster.wait_final(more, timeout=20)
    cluster.wait_quiet()
    summary = invariants.check(cluster, work + more)
    assert summary.lost == 0 and summary.attempts == 12


def test_a_cancel_from_a_host_with_no_master_ends_the_job_on_another_host(cluster: Cluster) -> None:
    """`phoenix cancel KEY --store URL` run in h3's namespace (no master
    there) ends a job running on h1 within 3 s (its ticks stop), `cancelled`,
    never re-run; the other jobs run on untouched."""
    lab = cluster.lab
    cluster.start([lab.host("h1"), lab.host("h2")])
    work = keys("stay", 4)
    cluster.submit(work, 6.0)
    running = cluster.wait_running({"h1": 2, "h2": 2})
    victim = running["h1"][0]
    result = lab.host("h3").run([PYTHON, "-m", "phoenix", "cancel", victim, "--store", cluster.url],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
    answered = time.monotonic()  # the ticks' clock: one CLOCK_MONOTONIC for every namespace
    assert result.returncode == 0, result.stderr
    assert f"cancelling {victim} on node h1" in result.stdout
    cluster.wait_final(work, timeout=30)
    cluster.wait_quiet()
    summary = invariants.check(cluster, work)
    assert cluster.states()[victim] == ("cancelled", "h1")
    assert [(a["master"], a["outcome"]) for a in cluster.attempts(victim)] == [("h1", "cancelled")]
    [(_first, last_tick, _who)] = invariants.run_spans(cluster.ticks)[victim]
    assert last_tick < answered + 3.0, f"the job ticked {last_tick - answered:.2f} s after the cancel's answer"
    assert [c["kind"] for c in cluster.callbacks() if c["key"] == victim] == ["failed"]
    assert summary.lost == 0 and all(cluster.states()[k][0] == "finished" for k in work if k != victim)


def test_flaky_link_delays_but_loses_nothing(cluster: Cluster) -> None:
    reason = netem_unsupported()
    if reason:
        pytest.skip(f"flaky link: {reason}")
    lab = cluster.lab
    cluster.start()
    for host in lab.hosts:
        lab.flaky(host, delay_ms=40, jitter_ms=20, loss_pct=5)
    work = keys("flaky", 12)
    cluster.submit(work, 0.5)
    cluster.wait_final(work, timeout=40)
    for host in lab.hosts:
        lab.steady(host)
    cluster.wait_quiet()
    invariants.check(cluster, work)


@pytest.mark.multihost_long
def test_fifty_concurrent_submitters_from_every_host(cluster: Cluster) -> None:
    lab = cluster.lab
    cluster.start()
    # 50 `phoenix submit` commands at once, spread over the hosts; 10 keys submitted twice (same params).
    work = keys("sub", 40)
    procs = []
    for i in range(50):
        host = lab.hosts[i % len(lab.hosts)]
        procs.append(host.popen([PYTHON, "-m", "phoenix", "submit", TICK, json.dumps({"s": 0.05}), "--key",
                                 work[i % 40], "--store", cluster.url], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True))
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)  # 50 interpreters starting at once on a shared 2-core machine
        assert proc.returncode == 0, err
        answers.append(json.loads(out))
    assert sum(a["created"] for a in answers) == 40
    by_key: dict[str, set[int]] = {}
    for i, a in enumerate(answers):
        by_key.setdefault(work[i % 40], set()).add(a["id"])
    assert all(len(ids) == 1 for ids in by_key.values())  # a resubmitted key names the same job
    cluster.wait_final(work, timeout=40)
    cluster.wait_quiet()
    summary = invariants.check(cluster, work)
    assert summary.attempts == 40


@pytest.mark.multihost_long
def test_long_repeated_partitions_and_host_losses(cluster: Cluster) -> None:
    lab = cluster.lab
    cluster.start()
    work = keys("storm", 30)
    cluster.submit(work, 1.5)
    for host in lab.hosts[:2]:
        lab.partition(host)
        cluster.masters[host.name].wait_log("lease_lapsed", timeout=TTL + 5)
        lab.heal(host)
    lab.lose(lab.host("h2"))
    cluster.wait_final(work, timeout=120)
    cluster.wait_quiet(timeout=30)
    invariants.check(cluster, work, duplicates_allowed=True)


def test_a_pool_is_never_exceeded_across_a_partition_and_heal(cluster: Cluster) -> None:
    lab = cluster.lab
    cluster.start()
    work = keys("pooled", 9)
    cluster.submit(work, 3.0, target="tests.multihost.app:pooled_tick")  # 6 slots on 3 hosts, a pool of 3
    wait_for(lambda: len(invariants.run_spans(cluster.ticks)) >= 3, 20, "the pool to fill")
    cut = next(host for host in ("h1", "h2", "h3") if cluster.running_on(lab.host(host)))
    lab.partition(lab.host(cut))
    cluster.masters[cut].wait_log("lease_lapsed", timeout=TTL + 5)
    lab.heal(lab.host(cut))
    cluster.wait_final(work, timeout=90)
    cluster.wait_quiet()
    invariants.check(cluster, work)
    spans = [span for runs in invariants.run_spans(cluster.ticks).values() for span in runs]
    most = max(sum(1 for other in spans if other[0] <= start <= other[1]) for start, _end, _who in spans)
    assert most <= 3, most  # the pool held through the cut and the heal
    assert cluster.sql("SELECT used FROM pools WHERE name = 'db'") == [(0,)]  # every slot came back
