"""How `phoenix status`, `status --json`, `jobs` and a metrics scrape's job
counts grow with the journal: a journal of N jobs (one attempt each; 1 in
100 failed, 1,000 pending, 4 running, the rest finished) is written by
direct SQL, then each command runs in its own process, measured for wall
time and peak RSS (the child's ru_maxrss).

    python -m bench.scale [N ...]            (default 100000 1000000)
    python -m bench.scale --store URL [N ...]  the same on a shared PostgreSQL store

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
PENDING = 1000
RUNNING = 4
TRACEBACK = "Traceback (most recent call last):\n  File \"app/jobs.py\", line 12, in fetch\nValueError: bad feed"


def job_rows(count: int, now: float) -> Iterator[tuple[Any, ...]]:
    """(id, key, target, params, state, attempts, outcome, result, error, created_at, updated_at)."""
    for i in range(1, count + 1):
        if i > count - RUNNING:
            state, outcome, result, error = "running", None, None, None
        elif i > count - RUNNING - PENDING:
            state, outcome, result, error = "pending", None, None, None
        elif i % FAILED_EVERY == 0:
            state, outcome, result, error = "failed", "error", None, TRACEBACK
        else:
            state, outcome, result, error = "finished", "finished", f'{{"n":{i}}}', None
        attempts = 0 if state == "pending" else 1
        at = now - (count - i)  # one job per second, the newest last
        yield (i, f"job-{i}", "app.jobs:fetch", f'{{"url":"https://example.com/feed/{i}"}}', state, attempts,
               outcome, result, error, at, at)


def attempt_rows(count: int, now: float) -> Iterator[tuple[Any, ...]]:
    """One attempt per job that ran: open (no outcome) for the running ones."""
    for job_id, _key, _target, _params, state, attempts, outcome, _result, error, at, _updated in job_rows(count, now):
        if not attempts:
            continue
        open_ = state == "running"
        yield (job_id, 1, 1, 100000 + job_id, at, None if open_ else at + 0.5, outcome,
               None if open_ else ("exit code 1" if state == "failed" else None), error, None if open_ else 20480)


def build_sqlite(path: Path, count: int) -> None:
    """A journal of `count` jobs, written as fast as SQLite takes rows (one transaction)."""
    now = time.time()
    with Journal(path) as journal, journal.transaction() as db:
        db.executemany("INSERT INTO jobs (id, key, target, params, state, attempts, outcome, result, error, "
                       "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", job_rows(count, now))
        db.executemany("INSERT INTO attempts (job_id, n, generation, pid, started_at, ended_at, outcome, reason, "
                       "error, max_rss_kb) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", attempt_rows(count, now))


def build_pg(url: str, count: int) -> None:
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
                for row in job_rows(count, now):
                    copy.write_row(row)
            with cur.copy("COPY attempts (job_id, n, generation, pid, started_at, ended_at, outcome, reason, "
                          "error, max_rss_kb, master, epoch, state) FROM STDIN") as copy:
                for row in attempt_rows(count, now):
                    copy.write_row((*row, "bench-node", 1, "running" if row[6] is None else "ended"))
            cur.execute("UPDATE jobs j SET current_attempt = a.id FROM attempts a WHERE a.job_id = j.id")
            cur.execute("SELECT setval('jobs_id_seq', %s)", (count,))
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


def run(count: int, store: str | None) -> list[tuple[str, float, float, int]]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        state_dir = Path(scratch) / ".phoenix"
        state_dir.mkdir()
        env = {**os.environ, "PHOENIX_STATE_DIR": str(state_dir)}
        started = time.monotonic()
        if store:
            env["PHOENIX_STORE"] = store
            build_pg(store, count)
            where = "PostgreSQL"
        else:
            build_sqlite(state_dir / "journal.db", count)
            where = f"{(state_dir / 'journal.db').stat().st_size / 1e6:.0f} MB journal"
        print(f"{count} jobs built in {time.monotonic() - started:.1f} s ({where})", flush=True)
        phoenix = [sys.executable, "-m", "phoenix"]
        for name, args in COMMANDS.items():
            _one([*phoenix, *args], env)  # once to warm the page cache, then measured
            took, peak, size = _one([*phoenix, *args], env)
            rows.append((name, took, peak, size))
        # What the master's metrics collector reads for phoenix_jobs: the store's counts (time per read
        # on an open store; peak RSS of a process that opens the store and reads them once).
        scrape = [sys.executable, "-c", SCRAPE, store or "sqlite", str(state_dir / "journal.db")]
        _one(scrape, env)
        _took, peak, size = _one(scrape, env)
        rows.append(("metrics job counts", counts_time(store or "sqlite", state_dir / "journal.db"), peak, size))
    for name, took, peak, size in rows:
        print(f"  {count:>9,} jobs  {name:<22} {took:9.5f} s  peak RSS {peak:7.1f} MB  output {size / 1e3:9.1f} kB",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="*", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--store", help="a postgresql:// URL (its Phoenix tables are emptied)")
    args = parser.parse_args()
    for count in args.counts:
        run(count, args.store)


if __name__ == "__main__":
    main()
