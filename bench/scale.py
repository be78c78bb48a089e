"""How `phoenix status`, `status --json`, `jobs` and a metrics scrape's job
counts grow with the journal: a journal of N jobs (one attempt each; 1 in
100 failed, 1,000 pending, 4 running, the rest finished) is written by
direct SQL, then each command runs in its own process, measured for wall
time and peak RSS (the child's ru_maxrss), and a master's claim of the next
job is timed on the open store.

    python -m bench.scale [N ...]            (default 100000 1000000)
    python -m bench.scale --store URL [N ...]  the same on a shared PostgreSQL store
    python -m bench.scale --pg [N ...]       the same on a private PostgreSQL (fsync on), started and stopped here
    python -m bench.scale --pending 100000 --repeat 5 1000000   (more pending jobs; min/median/max of 5 runs)

The journal's size on disk is printed beside it. Nothing is left running:
each command is a child process waited for.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from phoenix.store.sqlite import Journal

FAILED_EVERY = 100
PENDING = 1000  # (--pending)
CLAIMS = 200  # claims timed, each followed by its outcome (as a master does)
RUNNING = 4
TRACEBACK = "Traceback (most recent call last):\n  File \"app/jobs.py\", line 12, in fetch\nValueError: bad feed"


def job_rows(count: int, now: float, pending: int = PENDING) -> Iterator[tuple[Any, ...]]:
    """(id, key, target, params, state, attempts, outcome, result, error, created_at, updated_at)."""
    for i in range(1, count + 1):
        if i > count - RUNNING:
            state, outcome, result, error = "running", None, None, None
        elif i > count - RUNNING - pending:
            state, outcome, result, error = "pending", None, None, None
        elif i % FAILED_EVERY == 0:
            state, outcome, result, error = "failed", "error", None, TRACEBACK
        else:
            state, outcome, result, error = "finished", "finished", f'{{"n":{i}}}', None
        attempts = 0 if state == "pending" else 1
        at = now - (count - i)  # one job per second, the newest last
        yield (i, f"job-{i}", "app.jobs:fetch", f'{{"url":"https://example.com/feed/{i}"}}', state, attempts,
               outcome, result, error, at, at)


def attempt_rows(count: int, now: float, pending: int = PENDING) -> Iterator[tuple[Any, ...]]:
    """One attempt per job that ran: open (no outcome) for the running ones."""
    for job_id, _key, _target, _params, state, attempts, outcome, _result, error, at, _updated in job_rows(
            count, now, pending):
        if not attempts:
            continue
        open_ = state == "running"
        yield (job_id, 1, 1, 100000 + job_id, at, None if open_ else at + 0.5, outcome,
               None if open_ else ("exit code 1" if state == "failed" else None), error, None if open_ else 20480)


def build_sqlite(path: Path, count: int, pending: int = PENDING) -> None:
    """A journal of `count` jobs, written as fast as SQLite takes rows (one transaction)."""
    now = time.time()
    with Journal(path) as journal, journal.transaction() as db:
        db.executemany("INSERT INTO jobs (id, key, target, params, state, attempts, outcome, result, error, "
                       "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       job_rows(count, now, pending))
        db.executemany("INSERT INTO attempts (job_id, n, generation, pid, started_at, ended_at, outcome, reason, "
                       "error, max_rss_kb) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", attempt_rows(count, now, pending))


def build_pg(url: str, count: int, pending: int = PENDING) -> None:
    """The same jobs in a shared store (its tables emptied first), by COPY."""
    from phoenix.store.postgres import connect, migrate

    migrate(url)
    now = time.time()
    conn = connect(url, autocommit=False)
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET LOCAL statement_timeout = 0")  # a million rows take longer than a store's statement
            cur.execute("TRUNCATE callbacks, attempts, jobs, events, masters, meta RESTART IDENTITY")
            with cur.copy("COPY jobs (id, key, target, params, state, attempts, outcome, result, error, "
                          "created_at, updated_at) FROM STDIN") as copy:
                for row in job_rows(count, now, pending):
                    copy.write_row(row)
            with cur.copy("COPY attempts (job_id, n, generation, pid, started_at, ended_at, outcome, reason, "
                          "error, max_rss_kb, master, epoch, state) FROM STDIN") as copy:
                for row in attempt_rows(count, now, pending):
                    copy.write_row((*row, "bench-node", 1, "running" if row[6] is None else "ended"))
            cur.execute("UPDATE jobs j SET current_attempt = a.id FROM attempts a WHERE a.job_id = j.id")
            cur.execute("SELECT setval('jobs_id_seq', %s)", (count,))
        conn.commit()  # (connect's own check of the session opened the transaction this block was part of)
    finally:
        conn.close()
    conn = connect(url)  # autocommit: VACUUM runs outside a transaction
    try:
        conn.execute("SET statement_timeout = 0")
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("VACUUM ANALYZE attempts")
    finally:
        conn.close()


def _one(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Measure in a fresh process, so that the peak RSS is this command's alone."""
    probe = [sys.executable, "-c",
             "import resource, subprocess, sys, time; t = time.monotonic(); "
             "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE); "
             "took = time.monotonic() - t; "
             "print(took, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, len(p.stdout), p.returncode); "
             "sys.stderr.buffer.write(p.stderr[-500:])", *argv]
    done = subprocess.run(probe, env=env, capture_output=True, text=True, check=True)
    took, peak_kb, size, code = done.stdout.split()
    if int(code) not in (0, 3):  # 3: no master running, which is the case here
        raise SystemExit(f"{' '.join(argv)} exited {code}: {done.stderr}")
    return float(took), int(peak_kb) / 1024, int(size)


COMMANDS = {
    "status": ["status"],
    "status --json": ["status", "--json"],
    "jobs": ["jobs"],
    "jobs --state failed": ["jobs", "--state", "failed"],
}

SCRAPE = ("from phoenix.store.open import open_store; import sys; "
          "s = open_store(sys.argv[1], sys.argv[2], create=False); print(s.counts()); s.close()")


def counts_time(store: str, journal: Path, repeats: int = 9) -> float:
    """Seconds one read of the job counts takes (the median of `repeats`), on an
    open store, as the master's collector reads them for each refresh."""
    from phoenix.store.open import open_store

    with open_store(store, journal, create=False) as opened:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            opened.counts()
            times.append(time.perf_counter() - started)
    return sorted(times)[repeats // 2]


def durable_commit(opened: Any, value: int) -> None:
    """One trivial durable commit of one row: the floor under a claim's time
    (a claim is a durable commit too, and this disk's flush is most of it)."""
    if isinstance(opened, Journal):
        with opened.transaction(durable=True) as db:
            db.execute("INSERT INTO meta VALUES ('bench_floor', ?) ON CONFLICT (name) DO UPDATE "
                       "SET value = excluded.value", (str(value),))
    else:
        opened.set_meta(bench_floor=value)  # (every commit on the shared store is durable)


def claim_times(store: str, journal: Path, claims: int = CLAIMS) -> tuple[list[float], list[float]]:
    """Seconds of each of `claims` claims of the next due job on an open store
    (the master's one statement on PostgreSQL, under its registered lease),
    each followed by its outcome, untimed, as a master records it; and,
    alternated with them, as many trivial durable commits (durable_commit)."""
    from phoenix.store.base import SharedStore
    from phoenix.store.open import open_store

    with open_store(store, journal, create=False, node="bench-claimer") as opened:
        if isinstance(opened, SharedStore):
            opened.register_master(os.getpid(), 1, time.time(), 1, None, instance="bench-scale")
        times, floor = [], []
        for index in range(claims):
            started = time.perf_counter()
            durable_commit(opened, index)
            floor.append(time.perf_counter() - started)
            started = time.perf_counter()
            claimed = opened.claim(1, None, None)
            times.append(time.perf_counter() - started)
            if claimed is None:
                raise SystemExit("no pending job left to claim: use a larger --pending")
            job, attempt_id = claimed
            opened.end_attempt(attempt_id, job.id, outcome="finished", reason=None, error=None, result_json="null",
                               max_rss_kb=None, job_state="finished", counts_as_failure=False, callback=None,
                               attempt_n=job.attempts + 1)
        if isinstance(opened, SharedStore):
            opened.release_lease("stopped")
    return times, floor


def spread(values: list[float]) -> str:
    """min / median / max, in ms."""
    ordered = [value * 1000 for value in sorted(values)]
    return f"{ordered[0]:.2f} / {ordered[len(ordered) // 2]:.2f} / {ordered[-1]:.2f}"


def run(count: int, store: str | None, pending: int = PENDING,
        repeat: int = 1) -> list[tuple[str, list[float], float, int]]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        state_dir = Path(scratch) / ".phoenix"
        state_dir.mkdir()
        env = {**os.environ, "PHOENIX_STATE_DIR": str(state_dir)}
        started = time.monotonic()
        if store:
            env["PHOENIX_STORE"] = store
            build_pg(store, count, pending)
            where = "PostgreSQL"
        else:
            build_sqlite(state_dir / "journal.db", count, pending)
            where = f"{(state_dir / 'journal.db').stat().st_size / 1e6:.0f} MB journal"
        print(f"{count} jobs ({pending} pending) built in {time.monotonic() - started:.1f} s ({where})", flush=True)
        phoenix = [sys.executable, "-m", "phoenix"]
        for name, args in COMMANDS.items():
            _one([*phoenix, *args], env)  # once to warm the page cache, then measured
            took = []
            for _ in range(repeat):
                seconds, peak, size = _one([*phoenix, *args], env)
                took.append(seconds)
            rows.append((name, took, peak, size))
        # What the master's metrics collector reads for phoenix_jobs: the store's counts (time per read
        # on an open store; peak RSS of a process that opens the store and reads them once).
        scrape = [sys.executable, "-c", SCRAPE, store or "sqlite", str(state_dir / "journal.db")]
        _one(scrape, env)
        _took, peak, size = _one(scrape, env)
        rows.append(("metrics job counts", [counts_time(store or "sqlite", state_dir / "journal.db")], peak, size))
        claims, floor = claim_times(store or "sqlite", state_dir / "journal.db")
        rows.append(("claim (one master)", claims, 0.0, 0))
        rows.append(("a bare durable commit", floor, 0.0, 0))
    for name, took, peak, size in rows:
        print(f"  {count:>9,} jobs  {name:<22} {spread(took)} ms (min / median / max of {len(took)})  "
              f"peak RSS {peak:7.1f} MB  output {size / 1e3:9.1f} kB", flush=True)
    return rows


def private_postgres(scratch: Path) -> Any:
    """A PostgreSQL server of this run's own (fsync on), on 127.0.0.1: tests/multihost/netlab.py's."""
    from tests.multihost.netlab import Postgres

    scratch.chmod(0o755)  # as root, the server runs as another user and must reach its data directory
    server = Postgres(scratch / "pg", "127.0.0.1", fsync=True).init().start()
    server.sql("CREATE DATABASE bench_scale")
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="*", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--store", help="a postgresql:// URL (its Phoenix tables are emptied)")
    parser.add_argument("--pg", action="store_true", help="a private PostgreSQL server, started and stopped here")
    parser.add_argument("--pending", type=int, default=PENDING, help="pending jobs among them (default 1000)")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs of each command (min/median/max)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-pg-") as scratch:
        server = private_postgres(Path(scratch)) if args.pg else None
        try:
            store = server.url("bench_scale") if server is not None else args.store
            for count in args.counts:
                run(count, store, args.pending, args.repeat)
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
