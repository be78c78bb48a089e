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
    return {job["key"]: job for job in status(url)[1]["jobs"]}


def test_two_masters_share_the_jobs_and_report_them(tmp_path: Path, pg_url: str) -> None:
    a = shared_master(tmp_path, "a", pg_url, "--workers", "2").start()
    b = shared_master(tmp_path, "b", pg_url, "--workers", "2").start()
    try:
        for i in range(8):
            assert submit(pg_url, "tests.apps.jobs:sleep", {"s": 0.3}, f"job-{i}")["created"]
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
    try:
        for i in range(2):
            submit(pg_url, "tests.apps.jobs:sleep", {"s": 3}, f"long-{i}")
        wait_for(lambda: [j["node"] for j in jobs_by_key(pg_url).values() if j["state"] == "running"] == ["a", "a"],
                 what="both jobs running on a")
        b = shared_master(tmp_path, "b", pg_url, "--workers", "2").start()
        try:
            children = [j["pid"] for j in jobs_by_key(pg_url).values()]
            a.signal(signal.SIGKILL)  # the host's master dies; its children are ended too, as a lost host's
            a.wait_exit()
            for pid in children:
                os.killpg(pid, signal.SIGKILL)
            # ttl 2 s + grace 1.4 s + a recovery period: well within 10 s
            wait_for(lambda: all(j["state"] == "running" and j["node"] == "b" for j in jobs_by_key(pg_url).values()),
                     timeout=10, what="b to run a's jobs again")
            b.wait_log("recovered masters=a attempts=2")
            done = wait_for(lambda: (lambda js: js if all(j["state"] == "finished" for j in js.values()) else None)(
                jobs_by_key(pg_url)), timeout=20, what="the jobs to finish on b")
            assert {j["attempt"] for j in done.values()} == {2}
            assert sorted(c["key"] for c in b.callbacks() if c["kind"] == "finished") == ["long-0", "long-1"]
            code, report = status(pg_url)
            assert {m["node"]: m["state"] for m in report["masters"]}["a"].startswith("lost")
        finally:
            b.stop()
    finally:
        a.stop()
