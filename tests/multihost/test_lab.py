"""The harness checks itself with a plain psycopg client (tests/multihost/
probe.py) before Phoenix is put through it: each fault does to a client what
it claims to do, and the lab leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.driver import PYTHON, REPO, wait_for
from tests.multihost.netlab import IP, Host, Lab, Postgres, lab_tempdir, netem_unsupported

# The probe tests check the harness itself; the fault suite exercises the same injectors on Phoenix.
harness_probe = pytest.mark.multihost_long


class Probe:
    def __init__(self, lab: Lab, host: Host, log: Path) -> None:
        self.lab, self.host, self.log = lab, host, log
        with open(log, "wb") as out:
            self.proc = host.popen([PYTHON, "-m", "tests.multihost.probe", lab.pg.url(), host.name], cwd=REPO,
                                   stdout=out, stderr=subprocess.STDOUT)

    def rows(self) -> int:
        return int(self.lab.pg.sql("SELECT count(*) FROM probe WHERE host = %s", [self.host.name])[0][0])

    def backends(self) -> set[int]:
        return {r[0] for r in self.lab.pg.sql("SELECT DISTINCT backend FROM probe WHERE host = %s",
                                               [self.host.name])}

    def said(self, text: str) -> int:
        return self.log.read_text().count(text)

    def progresses(self, by: int = 5, timeout: float = 15.0) -> None:
        start = self.rows()
        wait_for(lambda: self.rows() >= start + by, timeout, f"{self.host.name}'s probe to write {by} more rows")


@pytest.fixture
def probe_table(lab: Lab) -> Lab:
    lab.pg.sql("CREATE TABLE probe (at timestamptz DEFAULT clock_timestamp(), host text, n int, backend int)")
    return lab


def probe(lab: Lab, name: str, tmp_path: Path) -> Probe:
    return Probe(lab, lab.host(name), tmp_path / f"probe-{name}.log")


@harness_probe
def test_every_host_reaches_postgres_on_the_bridge_and_only_through_its_own_link(probe_table: Lab,
                                                                                 tmp_path: Path) -> None:
    probes = [probe(probe_table, h.name, tmp_path) for h in probe_table.hosts]
    for p in probes:
        p.progresses()
    addresses = {r[0] for r in probe_table.pg.sql(
        "SELECT host(client_addr) FROM pg_stat_activity WHERE client_addr IS NOT NULL")}
    assert addresses == {h.address for h in probe_table.hosts}


@harness_probe
def test_partition_is_silent_to_the_server_and_heal_restores(probe_table: Lab, tmp_path: Path) -> None:
    p, other = probe(probe_table, "h1", tmp_path), probe(probe_table, "h2", tmp_path)
    p.progresses()
    probe_table.partition(p.host)
    wait_for(lambda: p.said("error"), 10, "the partitioned client to notice")
    # The server was told nothing: h1's session is still there, the other host still writes.
    assert probe_table.pg.sessions([p.host.address]) == 1
    other.progresses()
    stalled = p.rows()
    other.progresses()
    assert p.rows() == stalled
    probe_table.heal(p.host)
    p.progresses()


@harness_probe
def test_lost_host_has_no_process_left_and_its_session_hangs_on(probe_table: Lab, tmp_path: Path) -> None:
    p = probe(probe_table, "h1", tmp_path)
    p.progresses()
    probe_table.lose(p.host)
    assert p.proc.wait(5) == -signal.SIGKILL
    assert p.host.ns_pids() == []
    assert probe_table.pg.sessions([p.host.address]) == 1  # no FIN reached the server


@harness_probe
def test_frozen_client_stops_and_resumes(probe_table: Lab, tmp_path: Path) -> None:
    p = probe(probe_table, "h1", tmp_path)
    p.progresses()
    probe_table.freeze(p.proc.pid)
    wait_for(lambda: Path(f"/proc/{p.proc.pid}/stat").read_text().split(") ")[1][0] == "T", 5, "stopped")
    stalled = p.rows()
    probe(probe_table, "h2", tmp_path).progresses()
    assert p.rows() == stalled
    probe_table.thaw(p.proc.pid)
    p.progresses()


@harness_probe
def test_terminated_sessions_reconnect(probe_table: Lab, tmp_path: Path) -> None:
    p = probe(probe_table, "h1", tmp_path)
    p.progresses()
    assert probe_table.terminate_sessions() == 1
    wait_for(lambda: len(p.backends()) == 2, 10, "the client to write through a new session")


@harness_probe
@pytest.mark.parametrize("mode", ["fast", "kill"])
def test_postgres_restart_is_survived_by_a_reconnecting_client(probe_table: Lab, tmp_path: Path,
                                                               mode: str) -> None:
    p = probe(probe_table, "h1", tmp_path)
    p.progresses()
    probe_table.pg.restart(mode)
    wait_for(lambda: p.said("error"), 10, "the client to see the restart")
    p.progresses()


@harness_probe
def test_flaky_link_delays_but_delivers(probe_table: Lab, tmp_path: Path) -> None:
    reason = netem_unsupported()
    if reason:
        pytest.skip(f"flaky link: {reason}")
    p = probe(probe_table, "h1", tmp_path)
    p.progresses()
    probe_table.flaky(p.host, delay_ms=100, jitter_ms=10, loss_pct=5)
    p.progresses(by=3, timeout=20)
    ping = p.host.run([PYTHON, "-c", "import time,psycopg,sys; c=psycopg.connect(sys.argv[1]); t=time.monotonic();"
                       "c.execute('select 1'); print(time.monotonic()-t)", probe_table.pg.url()],
                      capture_output=True, text=True, timeout=30)
    assert float(ping.stdout) >= 0.15, ping  # a round trip crosses both delayed ends
    probe_table.steady(p.host)


def _leftovers(tag: str) -> dict[str, Any]:
    netns = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run([IP, "-o", "link"], capture_output=True, text=True).stdout
    return {"netns": [line for line in netns.splitlines() if tag in line],
            "links": [line for line in links.splitlines() if tag in line]}


def test_close_removes_every_namespace_link_and_process_even_mid_scenario(lab_reason: str | None) -> None:
    if lab_reason:
        pytest.skip(f"multi-host lab unavailable: {lab_reason}")
    root = lab_tempdir()
    lab = Lab(root, hosts=2).up()
    try:
        sleeper = lab.hosts[0].popen(["sleep", "600"])
        orphan = subprocess.Popen(lab.hosts[1].command(["sleep", "600"]))  # not recorded: found by namespace
        lab.freeze(sleeper.pid)
        lab.partition(lab.hosts[1])
        postmaster = lab.pg.proc
        assert postmaster is not None
    finally:
        lab.close()
    assert sleeper.wait(5) == -signal.SIGKILL and orphan.wait(5) == -signal.SIGKILL
    assert postmaster.poll() is not None
    assert _leftovers(lab.tag) == {"netns": [], "links": []}
    subprocess.run(["rm", "-rf", str(root)], check=True)


def test_a_failed_setup_leaves_nothing(lab_reason: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if lab_reason:
        pytest.skip(f"multi-host lab unavailable: {lab_reason}")
    root = lab_tempdir()
    lab = Lab(root, hosts=2)

    def broken_init(self: Postgres) -> Postgres:
        raise RuntimeError("initdb broke on purpose")

    monkeypatch.setattr(Postgres, "init", broken_init)
    with pytest.raises(RuntimeError, match="on purpose"):
        lab.up()
    assert _leftovers(lab.tag) == {"netns": [], "links": []}
    subprocess.run(["rm", "-rf", str(root)], check=True)
    assert not os.path.exists(root)
