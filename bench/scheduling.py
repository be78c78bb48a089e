"""`python -m bench.scheduling [--quick]`: the cost and the promptness of work
over time (docs/scheduling.md), each beside its peer in the same run.

- Idle CPU: a master holding 10,000 scheduled jobs (due in an hour) against
  the same master holding none, measured in turns of `window` seconds
  (schedstat of every thread of the master); min / median / max of each and
  the ratio of the medians. The claim: scheduled jobs cost an idle master
  nothing beyond its timers.
- Claim cost with a pool against without (SQLite, in process): `claims`
  jobs claimed one at a time (pending + begin_attempt, as the master does)
  from a journal of that many pending jobs, all of one pooled target (a pool
  as large as the jobs) against all of an unpooled one, interleaved rounds;
  min / median / max of microseconds per claim, and the ratio of medians.
- Due -> start: delayed jobs (`run_at` spread over a few seconds) and
  periodic ticks (every second), from the due time to their attempt's start
  as the journal records it (the attempt is committed just before the child
  is told to run), p50 / p99 / max; beside it, submit -> start of jobs due at
  once, with a free slot (the peer).

Every master is stopped by pid at the end (bench.procs.Registry).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.master import PhoenixMaster
from bench.procs import Registry, cpu_available, cpu_ns
from phoenix.store.sqlite import Journal, _insert_job

MODES = {"quick": {"scheduled": 10_000, "window": 3.0, "rounds": 2, "delayed": 40, "ticks": 8, "immediate": 40,
                   "claims": 500, "claim_rounds": 3},
         "full": {"scheduled": 10_000, "window": 10.0, "rounds": 3, "delayed": 200, "ticks": 30, "immediate": 200,
                  "claims": 2000, "claim_rounds": 5}}


def claim_cost(root: Path, claims: int, rounds: int, url: str | None = None) -> dict[str, list[float]]:
    """Microseconds per claim, with every job in a pool and with none, in
    alternating rounds: on a fresh SQLite journal each, or (`url`) on the
    PostgreSQL store there, emptied of Phoenix's rows first (the one-statement claim)."""
    figures: dict[str, list[float]] = {"pooled": [], "unpooled": []}
    for round_ in range(rounds):
        for kind in figures:
            target = f"bench.sched_app:{kind}-{round_}"
            store: Any
            if url is None:
                store = Journal(root / f"claims-{kind}-{round_}.db")
            else:
                from phoenix.store.postgres import PgStore

                store = PgStore(url, node=f"bench-{kind}-{round_}")
                store.register_master(os.getpid(), 1, time.time(), claims, "bench")
            pool = f"db-{round_}"  # (a fresh pool each round: the claimed attempts keep their slots)
            store.set_pools({pool: claims}, {target: pool if kind == "pooled" else None})
            store.submit_many((target, "null", f"{kind}-{round_}-{i}") for i in range(claims))
            t0 = time.perf_counter()
            for _ in range(claims):
                assert store.claim(1, 4242, None) is not None
            figures[kind].append((time.perf_counter() - t0) / claims * 1e6)
            store.close()
    return figures


def fill(state: Path, n: int, due_in: float) -> None:
    """n delayed jobs of the noop, due in `due_in` seconds, written in one transaction."""
    journal = Journal(state / "journal.db")
    now = time.time()
    with journal.transaction() as db:
        for i in range(n):
            _insert_job(db, f"later-{i}", "bench.sched_app:noop", "null", now, run_at=now + due_in + i * 1e-4)
    journal.close()


def idle_cpu(registry: Registry, root: Path, n: int, window: float, rounds: int) -> dict[str, list[float]]:
    """CPU seconds per second of an idle master, with n scheduled jobs and with none, in alternating turns."""
    masters = {}
    for name, jobs in (("scheduled", n), ("empty", 0)):
        master = PhoenixMaster(registry, root / name, "bench.sched_app:app", workers=4)
        fill(master.paths.root, jobs, 3600)
        masters[name] = master.start()
    time.sleep(2.0)  # past start-up
    figures: dict[str, list[float]] = {name: [] for name in masters}
    for _ in range(rounds):
        for name, master in masters.items():
            before, t0 = cpu_ns(master.pid) or 0, time.monotonic()
            time.sleep(window)
            figures[name].append(((cpu_ns(master.pid) or 0) - before) / 1e9 / (time.monotonic() - t0))
    for master in masters.values():
        master.stop()
    return figures


def latencies(registry: Registry, root: Path, delayed: int, ticks: int, immediate: int) -> dict[str, list[float]]:
    """Seconds from due to the attempt's start: delayed jobs, periodic ticks, and jobs due at once."""
    master = PhoenixMaster(registry, root / "latency", "bench.sched_app:tick_app", workers=4).start()
    journal = Journal(master.paths.journal)
    now = time.time()
    for i in range(delayed):  # due over the next few seconds, a few at a time
        journal.submit("bench.sched_app:noop", "null", f"delayed-{i}", run_at=now + 2 + (i % 20) * 0.25)
    for i in range(immediate):
        journal.submit("bench.sched_app:noop", "null", f"now-{i}")
        time.sleep(0.05)  # one at a time, with a free slot
    journal.close()
    deadline = time.monotonic() + max(10.0, ticks + 10.0)
    ro = sqlite3.connect(f"file:{master.paths.journal}?mode=ro", uri=True, timeout=30.0)
    query = ("SELECT j.key, j.tick, j.run_at, j.created_at, a.started_at FROM jobs j JOIN attempts a "
             "ON a.job_id = j.id AND a.n = 1")
    while time.monotonic() < deadline:
        rows = ro.execute(query).fetchall()
        if (sum(1 for r in rows if r[1] is not None) >= ticks
                and sum(1 for r in rows if r[0].startswith(("delayed-", "now-"))) >= delayed + immediate):
            break
        time.sleep(0.5)
    master.stop()
    figures: dict[str, list[float]] = {"delayed": [], "tick": [], "immediate": []}
    for key, tick, run_at, created_at, started_at in ro.execute(query):
        if tick is not None:
            figures["tick"].append(started_at - tick)
        elif key.startswith("delayed-"):
            figures["delayed"].append(started_at - run_at)
        else:
            figures["immediate"].append(started_at - created_at)
    ro.close()
    return figures


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows and fewer jobs")
    parser.add_argument("--store", help="also the claim cost on this PostgreSQL store (its jobs stay there)")
    args = parser.parse_args()
    mode = MODES["quick" if args.quick else "full"]
    registry = Registry()
    with tempfile.TemporaryDirectory(prefix="phoenix-bench-sched-") as tmp:
        try:
            free = cpu_available()
            claims = claim_cost(Path(tmp), mode["claims"], mode["claim_rounds"])
            shared = claim_cost(Path(tmp), mode["claims"], mode["claim_rounds"], args.store) if args.store else None
            idle = idle_cpu(registry, Path(tmp), mode["scheduled"], mode["window"], mode["rounds"])
            late = latencies(registry, Path(tmp), mode["delayed"], mode["ticks"], mode["immediate"])
        finally:
            registry.cleanup()
    print(f"CPU free at start: {free:.2f} of a core")
    print("idle master, CPU s/s (min / median / max):")
    for name, values in idle.items():
        print(f"  {name:9} {min(values):.5f} / {statistics.median(values):.5f} / {max(values):.5f}")
    ratio = statistics.median(idle["scheduled"]) / max(statistics.median(idle["empty"]), 1e-9)
    print(f"  ratio scheduled/empty (medians): {ratio:.2f}x")
    for where, figures in (("SQLite", claims), ("PostgreSQL", shared)):
        if figures is None:
            continue
        print(f"claim on {where}, us per job ({mode['claims']} pending; min / median / max):")
        for name, values in figures.items():
            print(f"  {name:9} {min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}")
        print(f"  ratio pooled/unpooled (medians): "
              f"{statistics.median(figures['pooled']) / statistics.median(figures['unpooled']):.2f}x")
    print("due -> attempt started, ms (n, p50 / p99 / max):")
    for name, values in late.items():
        if values:
            print(f"  {name:9} n={len(values):<4} {percentile(values, 50) * 1e3:7.1f} / "
                  f"{percentile(values, 99) * 1e3:7.1f} / {max(values) * 1e3:7.1f}")


if __name__ == "__main__":
    main()
