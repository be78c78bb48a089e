"""The price of long jobs' calls (docs/long-jobs.md), each beside its peer in
the same run, rounds interleaved so that load on a shared machine falls on
both alike:

    python -m bench.longjobs                    # 3 rounds; about a minute
    python -m bench.longjobs --rounds 5 --seconds 3 --checkpoints 500

    checkpoint  phoenix.checkpoint() round trips timed inside a job (the
                master's durable commit and its ack on the child's
                connection), against the same number of bare durable SQLite
                commits (synchronous=FULL, one small row each) made by the
                same child in a scratch database beside the journal: what
                durability alone costs on this disk
    progress    phoenix.progress(i, N) calls per second in a job's tight loop,
                against phoenix.heartbeat() (a counter increment); and the
                master's CPU per progress() call: its CPU (schedstat) over a
                job that calls progress() for --seconds, minus its CPU over
                a job that calls heartbeat() for as long (beats, the spawn
                and the outcome are in both), divided by the progress() calls

Min / median / max over the rounds. The state directory (and the scratch
database) is on the file system of --dir (default: the system's temporary
directory; it must be a real disk, not tmpfs, where fsync costs nothing).
Every process is stopped by pid (bench.procs.Registry)."""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import phoenix
from bench.master import PhoenixMaster
from bench.procs import Registry, cpu_ns, loadavg
from phoenix.store.sqlite import Journal

app = phoenix.App(workers=1, heartbeat_interval=0.5, heartbeat_timeout=5.0)


@app.job(retries=0)
def checkpoints(params: dict[str, Any]) -> dict[str, Any]:
    n = params["n"]
    saves = []
    for i in range(n):
        started = time.perf_counter()
        phoenix.checkpoint({"next": i, "note": "a cursor of a few dozen bytes"})
        saves.append(time.perf_counter() - started)
    db = sqlite3.connect(Path(params["dir"]) / f"peer-{os.getpid()}.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    commits = []
    for i in range(n):
        started = time.perf_counter()
        db.execute("INSERT OR REPLACE INTO t VALUES (1, ?)", (f'{{"next":{i}}}',))
        commits.append(time.perf_counter() - started)
    db.close()
    return {"checkpoint": statistics.median(saves), "commit": statistics.median(commits)}


@app.job(retries=0)
def calls(params: dict[str, Any]) -> dict[str, Any]:
    """params["call"] ("progress" or "heartbeat") in a tight loop for params["seconds"]."""
    call, deadline, done = params["call"], time.monotonic() + params["seconds"], 0
    while time.monotonic() < deadline:
        for _ in range(1000):
            if call == "progress":
                phoenix.progress(done, 10**9, None)
            else:
                phoenix.heartbeat()
            done += 1
    return {"calls": done, "seconds": params["seconds"]}


def run_job(master: PhoenixMaster, journal: Journal, target: str, params: dict[str, Any],
            key: str) -> tuple[dict[str, Any], int]:
    """Submit, wait for the end (reading the journal, not asking the master),
    and return (its result, the master's CPU ns over it)."""
    before = cpu_ns(master.pid) or 0
    master.submit(f"bench.longjobs:{target}", params, key)
    deadline = time.monotonic() + 120
    while True:
        job = journal.job_by_key(key)
        if job is not None and job["state"] in ("finished", "failed"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{key} did not end")
        time.sleep(0.05)
    used = (cpu_ns(master.pid) or 0) - before
    if job["state"] != "finished":
        raise RuntimeError(f"{key} failed: {job['error']}")
    import json

    return json.loads(job["result"]), used


def spread(values: list[float], scale: float, unit: str) -> str:
    low, middle, high = min(values), statistics.median(values), max(values)
    return f"{middle * scale:,.1f} {unit} (min {low * scale:,.1f}, max {high * scale:,.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="of each tight loop")
    parser.add_argument("--checkpoints", type=int, default=200, help="per round")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    registry = Registry()
    scratch = Path(tempfile.mkdtemp(prefix="phoenix-bench-longjobs-", dir=args.dir))
    try:
        master = PhoenixMaster(registry, scratch / "state", "bench.longjobs:app")
        master.start()
        journal = Journal(master.paths.journal, create=False)
        saves, commits, ratios, rates, peer_rates, cpu_per_call = [], [], [], [], [], []
        for r in range(args.rounds):
            result, _cpu = run_job(master, journal, "checkpoints", {"n": args.checkpoints, "dir": str(scratch)},
                                   f"cp-{r}")
            saves.append(result["checkpoint"])
            commits.append(result["commit"])
            ratios.append(result["checkpoint"] / result["commit"])
            order = ("progress", "heartbeat") if r % 2 == 0 else ("heartbeat", "progress")
            measured = {call: run_job(master, journal, "calls", {"call": call, "seconds": args.seconds},
                                      f"{call}-{r}") for call in order}
            (progress, progress_cpu), (heartbeat, heartbeat_cpu) = measured["progress"], measured["heartbeat"]
            rates.append(progress["calls"] / progress["seconds"])
            peer_rates.append(heartbeat["calls"] / heartbeat["seconds"])
            cpu_per_call.append(max(0, progress_cpu - heartbeat_cpu) / progress["calls"])
        journal.close()
        print(f"rounds {args.rounds}, load {loadavg()}, state directory on {args.dir}")
        print(f"checkpoint() round trip   {spread(saves, 1e6, 'us')}")
        print(f"  bare durable commit     {spread(commits, 1e6, 'us')}")
        print(f"  ratio (median)          {spread(ratios, 1, 'x')}")
        print(f"progress() calls/s        {spread(rates, 1e-6, 'M/s')}")
        print(f"  heartbeat() calls/s     {spread(peer_rates, 1e-6, 'M/s')}")
        print(f"  ratio                   {spread([a / b for a, b in zip(rates, peer_rates, strict=True)], 1, 'x')}")
        print(f"master CPU per progress() {spread(cpu_per_call, 1, 'ns')}")
    finally:
        registry.cleanup()


if __name__ == "__main__":
    main()
