"""`python -m bench --only store`: Phoenix on a shared PostgreSQL store, hosts
as network namespaces (tests/multihost/netlab.py: root, iproute2, the test
extra), against single-host SQLite Phoenix, procrastinate and pgqueuer on the
same server. Contenders of one figure alternate round by round (A, B, C, A,
B, C...) so the machine's load hits all of them; min/median/max per figure.

- e2e: N no-op jobs submitted in one transaction to idle workers; seconds
  until the last is recorded. Phoenix on PostgreSQL: 3 namespace hosts x 2
  slots. Phoenix on SQLite: one master, 6 slots. procrastinate: 3 workers (one
  per namespace host), --concurrency 2.
- store path: claim + record outcome, one job at a time on one connection,
  no fork and no job code: PgStore.claim/end_attempt against procrastinate's
  fetch_job/finish_job and pgqueuer's dequeue/log_jobs.
- recovery: a host with 2 running jobs is lost (link down, every process
  SIGKILLed); seconds until their next attempts start on the other host, with
  the default lease (30 s).
- idle: statements per second an idle master sends (pg_stat_statements,
  top-level calls, and pg_stat_database transactions) with 4 children
  running; procrastinate's idle worker in the same window length.
- latency: submit from outside the host (root namespace, one open store
  connection) -> job body running in a namespace host with free slots, and
  its stages (submit's round trip, to the claim, claim to body).

The e2e part also reports CPU per job by process class (/proc/PID/stat),
robust where jobs/s on a shared machine is not, and the masters' statements
per job (pg_stat_statements).

PHOENIX_BENCH_STORE_PARTS=e2e,store_path,latency,idle,recovery picks parts.

PHOENIX_BENCH_STORE_PIN=M,S (e.g. 0,1) pins the server apart from the hosts,
to judge the shared store per host rather than end to end on one box: every
PostgreSQL process on CPU S, and this driver on CPU M before it starts any
contender, so every master, fork server, job child and procrastinate worker
(all started by it, and inheriting its CPU set) shares CPU M with the
single-host SQLite master. The e2e ratio phoenix-pg / phoenix-sqlite is then
3 hosts x 2 slots against 1 host x 6 slots on the same one core.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from bench.procs import loadavg
from phoenix.store.sqlite import Journal
from phoenix.wire import control
from tests.driver import PYTHON, REPO, Master
from tests.multihost.cluster import Cluster
from tests.multihost.netlab import Lab, lab_unsupported

MODES = {
    "quick": {"jobs": 300, "reps": 3, "store_jobs": 500, "recovery_reps": 1, "idle_window": 20.0, "latency": 40},
    "full": {"jobs": 1000, "reps": 3, "store_jobs": 2000, "recovery_reps": 2, "idle_window": 60.0, "latency": 200},
}
NOOP = "bench.apps:noop"
PROCRASTINATE_APP = "bench.pg_peers.procrastinate_app"


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# -- CPU per job, by process class ---------------------------------------------------------
# /proc/PID/stat ticks: utime + stime of a process (self), and cutime + cstime
# of the children it has reaped (the fork server reaps every job child; the
# postmaster every backend that ended). Robust under load, unlike wall time.


def _times(pid: int) -> tuple[float, float]:
    """(own CPU s, reaped children's CPU s) of pid; (0, 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return 0.0, 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def _children_of(pid: int) -> list[int]:
    from tests.multihost.netlab import descendants

    return descendants(pid)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _fork_servers(masters: list[int]) -> list[int]:
    return [p for m in masters for p in _children_of(m) if b"fork server" in _cmdline(p)]


def _postgres_cpu(lab: Lab, backends: set[int]) -> dict[str, float]:
    """CPU s of the server: the given (long-lived) backends, and everything
    else (postmaster, background processes, short sessions it reaped)."""
    assert lab.pg.proc is not None
    postmaster = lab.pg.proc.pid
    own, reaped = _times(postmaster)
    out = {"pg backends": 0.0, "pg other": own + reaped}
    for pid in _children_of(postmaster):
        out["pg backends" if pid in backends else "pg other"] += _times(pid)[0]
    return out


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of pid and of everything below it onto `cpus`
    (sched_setaffinity acts on one thread; a child inherits its parent's set)."""
    for process in (pid, *_children_of(pid)):  # (all its descendants)
        try:
            for task in os.listdir(f"/proc/{process}/task"):
                os.sched_setaffinity(int(task), cpus)
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile


def pin_apart(lab: Lab, pin: str, say: Any) -> None:
    """PHOENIX_BENCH_STORE_PIN=M,S: the server on CPU S, this driver (and so all it starts from now) on CPU M."""
    masters_cpu, server_cpu = (int(cpu) for cpu in pin.split(","))
    assert lab.pg.proc is not None
    _pin(lab.pg.proc.pid, {server_cpu})
    os.sched_setaffinity(0, {masters_cpu})
    say(f"store: PostgreSQL pinned to CPU {server_cpu}; the hosts, the SQLite master and the peers "
        f"to CPU {masters_cpu}")


def _driver_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _phoenix_cpu(masters: list[int]) -> dict[str, float]:
    servers = _fork_servers(masters)
    return {"masters": sum(_times(m)[0] for m in masters), "fork servers": sum(_times(s)[0] for s in servers),
            "job children": sum(_times(s)[1] for s in servers)}


def _backends_from(lab: Lab, addresses: list[str]) -> set[int]:
    return {int(r[0]) for r in lab.pg.sql("SELECT pid FROM pg_stat_activity WHERE host(client_addr) = ANY(%s)",
                                          [addresses])}


def _per_job(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """ms of CPU per job, by class."""
    return {k: (after[k] - before[k]) * 1000 / n for k in after}


class Counter:
    """One query polled on one open local connection: a fresh connection per
    look (every 20 ms) cost the server a backend's start-up each time, ~2 ms
    of CPU per job on the 2 cores the contenders share, which the SQLite
    side's look (open the journal file) does not pay."""

    def __init__(self, lab: Lab, database: str, query: str) -> None:
        import psycopg

        self.conn = psycopg.connect(lab.pg.local_url(database), autocommit=True, connect_timeout=10)
        self.query = query

    def __call__(self) -> int:
        row = self.conn.execute(self.query).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.conn.close()


def _statements_per_job(lab: Lab, database: str, jobs: int) -> list[tuple[str, float]]:
    """The statements the masters sent (pg_stat_statements, top level), calls per job."""
    rows = lab.pg.sql("SELECT s.query, s.calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                      "WHERE d.datname = %s AND s.toplevel AND s.calls >= %s ORDER BY s.calls DESC",
                      [database, jobs // 10], database=database)
    return [(" ".join(str(q).split()), int(c) / jobs) for q, c in rows]


def _wait_count(count: Callable[[], int], n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while count() < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count()} of {n} jobs done after {timeout} s")
        time.sleep(0.02)


# -- end-to-end ------------------------------------------------------------------------


class PhoenixPg:
    name = "phoenix-pg"

    def __init__(self, lab: Lab, work: Path) -> None:
        self.cluster = Cluster(lab, work / "e2e-pg", ttl=30.0, app="bench.apps:noop_app", database="e2e")
        self.cluster.start()
        self.lab = lab
        self.finished = Counter(lab, "e2e", "SELECT count(*) FROM jobs WHERE state = 'finished'")
        self.total = 0

    def cpu(self) -> dict[str, float]:
        masters = [m.pid for m in self.cluster.masters.values()]
        if not hasattr(self, "backends"):
            self.backends = _backends_from(self.lab, [h.address for h in self.lab.hosts])
        return {**_phoenix_cpu(masters), **_postgres_cpu(self.lab, self.backends), "driver": _driver_cpu()}

    def round(self, n: int, rep: int) -> float:
        from phoenix.store.postgres import PgStore

        with PgStore(self.cluster.url) as store:
            store.connect()
            t0 = time.monotonic()
            store.submit_many((NOOP, "null", f"r{rep}-{i}") for i in range(n))
        self.total += n
        _wait_count(self.finished, self.total, 600)
        return time.monotonic() - t0


class PhoenixSqlite:
    name = "phoenix-sqlite"

    def __init__(self, lab: Lab, work: Path) -> None:
        self.master = Master(work / "e2e-sqlite", "bench.apps:noop_app", "--workers", "6",
                             log_path=work / "e2e-sqlite.log")
        self.master.start()
        self.total = 0

    def cpu(self) -> dict[str, float]:
        return {**_phoenix_cpu([self.master.pid]), "driver": _driver_cpu()}

    def round(self, n: int, rep: int) -> float:
        t0 = time.monotonic()
        journal = Journal(self.master.paths.journal)
        try:
            journal.submit_many((NOOP, "null", f"r{rep}-{i}") for i in range(n))
        finally:
            journal.close()
        control.request(self.master.paths.control_socket, {"cmd": "wake"}, timeout=5.0)
        self.total += n

        def finished() -> int:
            j = Journal(self.master.paths.journal)
            try:
                return j.counts().get("finished", 0)
            finally:
                j.close()

        _wait_count(finished, self.total, 600)
        return time.monotonic() - t0

    def close(self) -> None:
        self.master.stop()


class Procrastinate:
    name = "procrastinate"

    def __init__(self, lab: Lab, work: Path) -> None:
        from bench import pg_peers

        self.lab = lab
        self.url = lab.pg.create_database("e2e_procrastinate")
        pg_peers.procrastinate_install(self.url)
        env = {**os.environ, "PHOENIX_BENCH_PG_URL": self.url, "PYTHONPATH": str(REPO)}
        self.procs = []
        for host in lab.hosts:
            with open(work / f"procrastinate-{host.name}.log", "wb") as log:
                self.procs.append(host.popen([PYTHON, "-m", "procrastinate", "--app", PROCRASTINATE_APP, "worker",
                                              "--concurrency", "2"], env=env, cwd=REPO, stdout=log,
                                             stderr=subprocess.STDOUT))
        # Ready when every worker has registered its row.
        _wait_count(lambda: int(lab.pg.sql("SELECT count(*) FROM procrastinate_workers",
                                           database="e2e_procrastinate")[0][0]), len(lab.hosts), 60)
        self.done = Counter(lab, "e2e_procrastinate",
                            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
        self.total = 0

    def cpu(self) -> dict[str, float]:
        if not hasattr(self, "backends"):
            self.backends = _backends_from(self.lab, [h.address for h in self.lab.hosts])
        return {"workers": sum(_times(p.pid)[0] + _times(p.pid)[1] for p in self.procs),
                **_postgres_cpu(self.lab, self.backends), "driver": _driver_cpu()}

    def round(self, n: int, rep: int) -> float:
        from bench import pg_peers

        t0 = time.monotonic()
        pg_peers.procrastinate_defer(self.url, n)
        self.total += n
        _wait_count(self.done, self.total, 600)
        return time.monotonic() - t0


def run_e2e(lab: Lab, work: Path, n: int, reps: int, say: Any) -> dict[str, Any]:
    contenders: list[Any] = []
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[dict[str, float]]] = {}
    try:
        # One by one inside the try: a peer that cannot start (procrastinate not
        # installed) leaves no contender started before it running.
        for contender in (PhoenixPg, PhoenixSqlite, Procrastinate):
            contenders.append(contender(lab, work))
            times[contenders[-1].name], cpu[contenders[-1].name] = [], []
        for rep in range(reps + 1):  # round 0 warms up every side (imports, caches, first connections)
            for c in contenders:
                before = c.cpu()
                took = c.round(n, rep)
                if rep:
                    times[c.name].append(took)
                    cpu[c.name].append(_per_job(before, c.cpu(), n))
                say(f"store e2e {c.name} round {rep}: {n / took:.0f} jobs/s [load {loadavg()}]")
        statements = _statements_per_job(lab, "e2e", n * (reps + 1))
        say("store e2e phoenix-pg statements per job: " + "; ".join(f"{c:.2f} x {q[:60]!r}" for q, c in statements))
    finally:
        for c in contenders:
            if isinstance(c, PhoenixSqlite):
                c.close()
            if isinstance(c, PhoenixPg):
                c.finished.close()
                c.cluster.stop()
            if isinstance(c, Procrastinate):
                c.done.close()
    jps = {k: [n / t for t in v] for k, v in times.items()}
    cpu_ms = {name: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]} for name, rounds in cpu.items()}
    for name, classes in cpu_ms.items():
        say(f"store e2e {name} CPU ms/job (median of rounds): "
            + ", ".join(f"{k} {v:.2f}" for k, v in classes.items()) + f", total {sum(classes.values()):.2f}")
    return {"n": n, "reps": reps, "seconds": times, "jobs_per_s": {k: spread(v) for k, v in jps.items()},
            "cpu_ms_per_job": cpu_ms, "phoenix_pg_statements_per_job": statements,
            "ratios": {peer: spread([a / b for a, b in zip(jps["phoenix-pg"], jps[peer], strict=True)])
                       for peer in ("phoenix-sqlite", "procrastinate")}}


# -- store path alone --------------------------------------------------------------------


def phoenix_store_path(url: str, n: int, rep: int) -> float:
    from phoenix.store.postgres import PgStore

    with PgStore(url, node=f"bench-store-{rep}", lease_ttl=300) as store:
        store.register_master(os.getpid(), 1, time.time(), 1, None)
        store.submit_many((NOOP, "null", f"s{rep}-{i}") for i in range(n))
        t0 = time.perf_counter()
        for _ in range(n):
            claimed = store.claim(1, os.getpid(), None)
            assert claimed is not None
            job, attempt = claimed
            store.end_attempt(attempt, job.id, outcome="finished", reason=None, error=None, result_json="null",
                              max_rss_kb=None, job_state="finished", counts_as_failure=False, callback=None,
                              attempt_n=job.attempts + 1)
        took = time.perf_counter() - t0
        store.release_lease("stopped")
    return took


def run_store_path(lab: Lab, n: int, reps: int, say: Any) -> dict[str, Any]:
    from bench import pg_peers

    ph_url = lab.pg.create_database("store_phoenix")
    migrated = subprocess.run([PYTHON, "-m", "phoenix", "store", "migrate", "--store", ph_url], capture_output=True,
                              text=True, cwd=REPO)
    assert migrated.returncode == 0, migrated.stderr
    pr_url = lab.pg.create_database("store_procrastinate")
    pg_peers.procrastinate_install(pr_url)
    pq_url = lab.pg.create_database("store_pgqueuer")
    sides: dict[str, Callable[[int], float]] = {
        "phoenix-pg": lambda rep: phoenix_store_path(ph_url, n, rep),
        "procrastinate": lambda rep: asyncio.run(pg_peers.procrastinate_store_path(pr_url, n)),
        "pgqueuer": lambda rep: asyncio.run(pg_peers.pgqueuer_store_path(pq_url, n)),
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    for rep in range(reps + 1):
        for name, side in sides.items():
            took = side(rep)
            if rep:
                times[name].append(took)
            say(f"store path {name} round {rep}: {n / took:.0f} jobs/s [load {loadavg()}]")
    jps = {k: [n / t for t in v] for k, v in times.items()}
    return {"n": n, "reps": reps, "jobs_per_s": {k: spread(v) for k, v in jps.items()},
            "ratios": {peer: spread([a / b for a, b in zip(jps["phoenix-pg"], jps[peer], strict=True)])
                       for peer in ("procrastinate", "pgqueuer")}}


# -- recovery after a host's death -----------------------------------------------------------


def run_recovery(lab: Lab, work: Path, reps: int, say: Any) -> dict[str, Any]:
    from phoenix.rules.leases import lease_times

    delays: list[float] = []
    h1, h2 = lab.hosts[0], lab.hosts[1]
    for rep in range(reps):
        cluster = Cluster(lab, work / f"recovery-{rep}", ttl=30.0, database=f"recovery_{rep}")
        try:
            cluster.start([h1])
            keys = [f"long-{i}" for i in range(2)]
            cluster.submit(keys, 300.0)
            cluster.wait_running({"h1": 2}, timeout=60)
            cluster.start([h2])
            lost_at = time.time()
            lab.lose(h1)
            deadline = time.monotonic() + 120
            while not all(len(cluster.attempts(k)) >= 2 for k in keys):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"h1's jobs not re-run within 120 s:\n{cluster.logs()}")
                time.sleep(0.1)
            delay = max(cluster.attempts(k)[1]["started_at"] for k in keys) - lost_at
            delays.append(delay)
            say(f"store recovery round {rep}: {delay:.1f} s [load {loadavg()}]")
        finally:
            cluster.stop()
            lab.heal(h1)  # the namespace stays; its processes are gone
    times = lease_times(30.0, 1.0)
    return {"ttl": 30.0, "grace": times.grace, "seconds": spread(delays), "all": delays}


# -- an idle master's cost to the database ----------------------------------------------------


def _db_counters(lab: Lab, database: str) -> tuple[int, int]:
    # Read from the postgres database: our own statements are not counted against `database`.
    calls = lab.pg.sql("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d "
                       "ON d.oid = s.dbid WHERE d.datname = %s AND s.toplevel", [database])[0][0]
    xacts = lab.pg.sql("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                       [database])[0][0]
    return int(calls), int(xacts)


def _idle_rate(lab: Lab, database: str, window: float) -> dict[str, float]:
    lab.pg.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    calls0, xacts0 = _db_counters(lab, database)
    time.sleep(window)  # the measurement window itself, not a wait for an event
    calls1, xacts1 = _db_counters(lab, database)
    return {"statements_per_s": (calls1 - calls0) / window, "transactions_per_s": (xacts1 - xacts0) / window}


def run_idle(lab: Lab, work: Path, window: float, say: Any) -> dict[str, Any]:
    from bench import pg_peers

    cluster = Cluster(lab, work / "idle", ttl=30.0, workers=4, database="idle")
    try:
        cluster.start([lab.hosts[0]])
        keys = [f"sleeper-{i}" for i in range(4)]
        cluster.submit(keys, window + 120)
        cluster.wait_running({"h1": 4}, timeout=60)
        time.sleep(2.0)  # let the claims' statements settle out of the window
        phoenix = _idle_rate(lab, "idle", window)
        say(f"store idle phoenix: {phoenix} [load {loadavg()}]")
    finally:
        cluster.stop()
    url = lab.pg.create_database("idle_procrastinate")
    pg_peers.procrastinate_install(url)
    env = {**os.environ, "PHOENIX_BENCH_PG_URL": url, "PYTHONPATH": str(REPO)}
    with open(work / "idle-procrastinate.log", "wb") as log:
        worker = lab.hosts[1].popen([PYTHON, "-m", "procrastinate", "--app", PROCRASTINATE_APP,
                                     "worker", "--concurrency", "4"], env=env, cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT)
    try:
        _wait_count(lambda: int(lab.pg.sql("SELECT count(*) FROM procrastinate_workers",
                                           database="idle_procrastinate")[0][0]), 1, 60)
        time.sleep(2.0)
        peer = _idle_rate(lab, "idle_procrastinate", window)
        say(f"store idle procrastinate: {peer}")
    finally:
        worker.terminate()
        worker.wait(20)
    return {"window": window, "children": 4, "phoenix": phoenix, "procrastinate": peer}


# -- cross-host submit -> start ----------------------------------------------------------------


def run_latency(lab: Lab, work: Path, samples: int, say: Any) -> dict[str, Any]:
    from phoenix.store.postgres import PgStore

    cluster = Cluster(lab, work / "latency", ttl=30.0, workers=4, app="bench.apps:beat_app", database="latency")
    reply_path = str(work / "latency-probe.sock")  # a path socket: reachable from every namespace
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(reply_path)
    sock.settimeout(10.0)
    os.chmod(reply_path, 0o666)
    found: list[float] = []
    # Where the time goes: submit's round trip (insert + NOTIFY, committed), then
    # the commit -> the claim's clock_timestamp() (the master's wake-up, its turn,
    # a waiting child, the claim's start), then the claim -> the job body (the
    # claim's commit, the order, the child's start). Wall clocks of one machine.
    stages: dict[str, list[float]] = {"submit": [], "to claim": [], "claim to body": []}
    wall_minus_mono = time.time() - time.monotonic()
    try:
        cluster.start([lab.hosts[1]])
        with PgStore(cluster.url) as store:
            store.connect()
            for i in range(samples + 5):
                time.sleep(0.05)  # the previous probe has ended: slots are free
                t0 = time.monotonic_ns()
                store.submit("bench.apps:probe", json.dumps({"i": i, "reply": reply_path}), f"probe-{i}")
                committed = time.monotonic_ns()
                while True:
                    stamp, _, index = sock.recv(256).partition(b" ")
                    if int(index) == i:
                        break
                if i >= 5:  # the first few warm the master's import of the target
                    found.append((int(stamp) - t0) / 1e6)
                    claimed = float(cluster.sql("SELECT a.started_at FROM attempts a JOIN jobs j ON j.id = a.job_id "
                                                "WHERE j.key = %s", [f"probe-{i}"])[0][0]) - wall_minus_mono
                    stages["submit"].append((committed - t0) / 1e6)
                    stages["to claim"].append(claimed * 1e3 - committed / 1e6)
                    stages["claim to body"].append(int(stamp) / 1e6 - claimed * 1e3)
        say(f"store latency p50 {statistics.median(found):.1f} ms: "
            + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in stages.items()) + f" ms [load {loadavg()}]")
    finally:
        cluster.stop()
        sock.close()
    found.sort()
    return {"samples": len(found), "p50_ms": statistics.median(found), "p99_ms": found[int(len(found) * 0.99) - 1],
            "max_ms": found[-1], "stages_p50_ms": {k: statistics.median(v) for k, v in stages.items()}}


def run(work: Path, mode: str, say: Any) -> dict[str, Any]:
    reason = lab_unsupported()
    if reason:
        raise RuntimeError(f"the store figures need the namespace lab: {reason}")
    params = MODES[mode]
    root = work / "store-lab"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    lab = Lab(root, hosts=3, fsync=True).up()
    pin = os.environ.get("PHOENIX_BENCH_STORE_PIN", "")
    if pin:
        pin_apart(lab, pin, say)
    out: dict[str, Any] = {"params": params, "fsync": True, "failed": {}, "pinned": pin or None}
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "e2e": lambda: run_e2e(lab, work, params["jobs"], params["reps"], say),
        "store_path": lambda: run_store_path(lab, params["store_jobs"], params["reps"], say),
        "latency": lambda: run_latency(lab, work, params["latency"], say),
        "idle": lambda: run_idle(lab, work, params["idle_window"], say),
        "recovery": lambda: run_recovery(lab, work, params["recovery_reps"], say),
    }
    wanted = [p for p in os.environ.get("PHOENIX_BENCH_STORE_PARTS", ",".join(parts)).split(",") if p]
    try:
        for name in wanted:
            try:
                out[name] = parts[name]()
            except Exception as exc:  # noqa: BLE001 - reported in the table, the other parts go on
                out["failed"][name] = f"{type(exc).__name__}: {exc}"
                say(f"store {name}: failed: {exc}")
    finally:
        lab.close()
    return out


def _fmt(s: dict[str, float], unit: str = "", digits: int = 0) -> str:
    return f"{s['median']:.{digits}f}{unit} (min {s['min']:.{digits}f}, max {s['max']:.{digits}f})"


def rows(r: dict[str, Any], row: Callable[..., Any], ok: Callable[..., bool | None]) -> list[Any]:
    """The RESULTS.md rows of the store figures (bench.report.Row, passed in to keep this module import-light)."""
    out = [row(f"store: {name}", "not measured", "-", "-", "-", "-", None, error)
           for name, error in r.get("failed", {}).items()]
    if "e2e" in r:
        e, jps = r["e2e"], r["e2e"]["jobs_per_s"]
        fig = f"store e2e: {e['n']:,} no-op jobs, 3 namespace hosts x 2 slots, one PostgreSQL (fsync on)"
        ph = _fmt(jps["phoenix-pg"], " jobs/s")
        out.append(row(fig, ph, "Phoenix on SQLite, one master, 6 slots", _fmt(jps["phoenix-sqlite"], " jobs/s"),
                       _fmt(e["ratios"]["phoenix-sqlite"], "x", 2), ">= 0.9x",
                       ok(e["ratios"]["phoenix-sqlite"]["median"], 0.9, below=False), f"{e['reps']} rounds"))
        out.append(row(fig, ph, "procrastinate: 3 workers (one per host), --concurrency 2",
                       _fmt(jps["procrastinate"], " jobs/s"), _fmt(e["ratios"]["procrastinate"], "x", 2),
                       ">= 1.0x", ok(e["ratios"]["procrastinate"]["median"], 1.0, below=False),
                       "procrastinate runs jobs in threads, Phoenix forks one process per job"))
        cpu = e.get("cpu_ms_per_job")
        if cpu:
            def classes(name: str) -> str:
                return ", ".join(f"{k} {v:.2f}" for k, v in cpu[name].items())

            pg, sqlite = (sum(cpu[name].values()) for name in ("phoenix-pg", "phoenix-sqlite"))
            out.append(row(f"store e2e: CPU per job, every process (ms, median of {e['reps']} rounds)",
                           f"{pg:.2f} ms", "Phoenix on SQLite, one master, 6 slots", f"{sqlite:.2f} ms",
                           f"{pg / sqlite:.2f}x",
                           "(reported)", None, f"PG: {classes('phoenix-pg')}; SQLite: {classes('phoenix-sqlite')}; "
                           f"procrastinate: {classes('procrastinate')}"))
    if "store_path" in r:
        s, jps = r["store_path"], r["store_path"]["jobs_per_s"]
        fig = f"store path alone: claim + record outcome, {s['n']:,} jobs, one connection, no fork"
        for peer, label in (("procrastinate", "procrastinate fetch_job + finish_job"),
                            ("pgqueuer", "pgqueuer dequeue + log_jobs")):
            out.append(row(fig, _fmt(jps["phoenix-pg"], " jobs/s"), label, _fmt(jps[peer], " jobs/s"),
                           _fmt(s["ratios"][peer], "x", 2), "(reported)", None))
    if "recovery" in r:
        rec = r["recovery"]
        limit = rec["ttl"] + 20
        out.append(row("host death -> its jobs running on another host (default lease 30 s)",
                       _fmt(rec["seconds"], " s", 1), "Oban/River rescue: 1 h; solid_queue: 5 min", "-",
                       f"ttl + grace = {rec['ttl'] + rec['grace']:.1f} s", f"<= ttl + 20 s = {limit:.0f} s",
                       ok(rec["seconds"]["max"], limit), f"{len(rec['all'])} round(s)"))
    if "idle" in r:
        i = r["idle"]
        out.append(row(f"idle master: statements/s to the database, {i['children']} children running",
                       f"{i['phoenix']['statements_per_s']:.2f}/s ({i['phoenix']['transactions_per_s']:.2f} xact/s)",
                       "procrastinate idle worker", f"{i['procrastinate']['statements_per_s']:.2f}/s "
                       f"({i['procrastinate']['transactions_per_s']:.2f} xact/s)", "-", "<= 0.2/s",
                       ok(i["phoenix"]["statements_per_s"], 0.2), f"{i['window']:.0f} s window"))
    if "latency" in r:
        lat = r["latency"]
        out.append(row("cross-host submit -> job running, free slot, p50", f"{lat['p50_ms']:.1f} ms", "-", "-",
                       f"p99 {lat['p99_ms']:.1f} ms", "p50 <= 5 ms", ok(lat["p50_ms"], 5),
                       f"{lat['samples']} samples; submit from the root namespace over the bridge"))
    return out
