"""Phoenix masters as hosts of a lab (netlab.Lab), one shared PostgreSQL
store, and the files their jobs and callbacks write. Standard library,
psycopg and phoenix only (the benchmarks use it too)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from tests.driver import PYTHON, REPO, Master, phoenix_cli, wait_for
from tests.multihost.netlab import Host, Lab

APP = "tests.multihost.app:app"
TICK = "tests.multihost.app:tick"


class Cluster:
    def __init__(self, lab: Lab, work: Path, ttl: float = 3.0, workers: int = 2, app: str = APP,
                 database: str = "phoenix") -> None:
        self.lab, self.work, self.ttl, self.workers, self.app = lab, work, ttl, workers, app
        self.url = lab.pg.create_database(database)
        migrated = phoenix_cli("store", "migrate", "--store", self.url)
        assert migrated.returncode == 0, migrated.stderr
        self.ticks = work / "ticks"
        self.ticks.mkdir(parents=True, exist_ok=True)
        self.callbacks_path = work / "callbacks.jsonl"
        self.masters: dict[str, Master] = {}

    # -- masters ------------------------------------------------------------------------

    def master(self, host: Host, *args: str) -> Master:
        """A master for `host` (not started): node = the host's name."""

        def popen(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
            proc: subprocess.Popen[Any] = subprocess.Popen(argv, **kwargs)
            host.pids.append(proc.pid)  # `ip netns exec` execs in place: this is the master's pid
            return proc

        master = Master(self.work / host.name, self.app, "--store", self.url, "--node", host.name,
                        "--lease-ttl", f"{self.ttl:g}", "--workers", str(self.workers), *args,
                        env={"PHOENIX_TEST_CALLBACKS": str(self.callbacks_path), "PHOENIX_MH_TICKS": str(self.ticks),
                             "PHOENIX_MH_HOST": host.name},
                        launcher=host.command([PYTHON, "-m", "phoenix"]), popen=popen, cwd=REPO,
                        log_path=self.work / f"{host.name}-master.log")
        self.masters[host.name] = master
        return master

    def start(self, hosts: Sequence[Host] | None = None) -> list[Master]:
        """Start a master on each host (all at once), then wait for each to be ready."""
        started = [self.master(h).start(wait_ready=False) for h in (hosts or self.lab.hosts)]
        for master in started:
            master.wait_log("ready generation=", timeout=30, what=f"{master.state_dir.name} ready", own=True)
        return started

    def stop(self) -> None:
        for master in self.masters.values():
            try:
                master.stop(timeout=15)
            except OSError:
                pass

    # -- jobs ---------------------------------------------------------------------------

    def submit(self, keys: Sequence[str], seconds: float, target: str = TICK, rerun: float | None = None) -> None:
        """Jobs in one transaction (one NOTIFY), from the root namespace. Each
        attempt after the first runs `rerun` seconds instead, where given: a
        scenario needs its first attempts long, not the re-runs."""
        from phoenix.store.postgres import PgStore

        params = json.dumps({"s": seconds} if rerun is None else {"s": seconds, "rerun_s": rerun})
        with PgStore(self.url) as store:
            store.submit_many((target, params, key) for key in keys)

    def sql(self, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.lab.pg.sql(query, params, database=self.url.rsplit("/", 1)[1])

    def states(self) -> dict[str, tuple[str, str | None]]:
        """key -> (job state, node of its current attempt)."""
        return {k: (s, n) for k, s, n in self.sql(
            "SELECT j.key, j.state, a.master FROM jobs j LEFT JOIN attempts a ON a.id = j.current_attempt")}

    def running_on(self, host: Host) -> list[str]:
        return sorted(k for k, (s, n) in self.states().items() if s == "running" and n == host.name)

    def wait_running(self, counts: dict[str, int], timeout: float = 20.0) -> dict[str, list[str]]:
        """Until each named host runs exactly that many jobs; their keys by host."""

        def seen() -> dict[str, list[str]] | None:
            found = {h: self.running_on(self.lab.host(h)) for h in counts}
            return found if all(len(found[h]) == n for h, n in counts.items()) else None

        result: dict[str, list[str]] = wait_for(seen, timeout, f"jobs running as {counts}")
        return result

    def wait_final(self, keys: Sequence[str], timeout: float = 30.0) -> None:
        def done() -> bool:
            states = self.states()
            return all(states.get(k, ("?", None))[0] in ("finished", "failed", "cancelled") for k in keys)

        try:
            wait_for(done, timeout, f"{len(keys)} jobs to end")
        except AssertionError:
            raise AssertionError(f"jobs not final: {self.states()}\n{self.logs()}") from None

    def attempts(self, key: str) -> list[dict[str, Any]]:
        rows = self.sql("SELECT a.n, a.master, a.state, a.outcome, a.started_at, a.ended_at, a.late_outcome "
                        "FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.key = %s ORDER BY a.n", [key])
        names = ("n", "master", "state", "outcome", "started_at", "ended_at", "late_outcome")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def callbacks(self) -> list[dict[str, Any]]:
        if not self.callbacks_path.exists():
            return []
        return [json.loads(line) for line in self.callbacks_path.read_text().splitlines() if line]

    def logs(self, tail: int = 2500) -> str:
        return "\n".join(f"--- {name}\n{m.log()[-tail:]}" for name, m in self.masters.items())

    def wait_quiet(self, timeout: float = 15.0) -> None:
        """Until no callback is owed and no attempt is open."""
        wait_for(lambda: not self.sql("SELECT 1 FROM callbacks WHERE state <> 'done' UNION ALL "
                                      "SELECT 1 FROM attempts WHERE outcome IS NULL"), timeout,
                 "owed callbacks and open attempts to settle")

    @staticmethod
    def now() -> float:
        return time.time()
