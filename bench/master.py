"""Driving a Phoenix master from the benchmarks: the shared driver
(tests/driver.py: `phoenix start` as a subprocess, its log, status, the
journal, stop) with what only the benchmarks need, which is why this subclass
exists: every pid goes into the run's Registry (the master at start, its
children whenever the live status names them) so that anything left is
stopped by pid; the environment and launcher every benchmark process gets
(bench.procs.env, the `phoenix` console script); the log in STATE/master.log;
and slots changed through a config file and SIGHUP so one master can grow
from 100 to 2,000 children."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from bench.procs import LogEvent, Registry, env, parse_log, tool
from phoenix.linux.paths import StatePaths
from tests.driver import Master


class PhoenixMaster(Master):
    def __init__(self, registry: Registry, state_dir: Path, app: str, *, workers: int | None = None,
                 extra_flags: Iterable[str] = (), use_config_file: bool = False) -> None:
        self.registry = registry
        paths = StatePaths(state_dir)
        paths.ensure()  # jobs go into the journal before the master starts
        self.config_file = paths.root / "bench.toml" if use_config_file else None
        self.workers = workers
        flags: list[str] = []
        if self.config_file is not None:
            self.write_config(workers or 1)
            flags += ["--config", str(self.config_file)]
        elif workers is not None:
            flags += ["--workers", str(workers)]
        super().__init__(paths.root, app, *flags, *extra_flags, base_env=env(), log_path=paths.root / "master.log",
                         launcher=[tool("phoenix")], popen=registry.popen)
        self.known_children: set[int] = set()
        self._ro: sqlite3.Connection | None = None

    def live(self, timeout: float = 10.0) -> dict[str, Any]:
        """The live status; the children it names join the registry."""
        reply = super().live(timeout)
        pids = {int(r["pid"]) for r in reply.get("running", {}).values()}
        new = pids - self.known_children
        if new:
            self.registry.add_many(new)
            self.known_children |= new
        return reply

    def stop(self, timeout: float = 60.0) -> None:
        """TERM the master (it TERMs its children and waits up to kill_grace);
        anything left afterwards is stopped by pid."""
        try:
            self.live(timeout=5.0)  # register the children running now, to stop any survivor by pid
        except Exception:  # noqa: BLE001 - the master may be gone already
            pass
        super().stop(timeout)
        for pid in sorted(self.known_children):
            self.registry.stop(pid, timeout=2.0, sig=signal.SIGKILL)

    def events(self, name: str | None = None, since: float = 0.0) -> list[LogEvent]:
        return [e for e in parse_log(self.log_path) if (name is None or e.name == name) and e.at >= since]

    # -- slots ----------------------------------------------------------------------

    def write_config(self, workers: int) -> None:
        assert self.config_file is not None
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(f"[phoenix]\nworkers = {workers}\n")
        tmp.rename(self.config_file)

    def set_workers(self, workers: int) -> None:
        """Change the slots: rewrite the config file and SIGHUP (reload config)."""
        self.write_config(workers)
        self.signal(signal.SIGHUP)
        self.workers = workers

    def running_count(self) -> int:
        """Jobs the journal shows running, read without asking the master: a
        status request makes the master read /proc for every child, which is
        not free with 1,000 of them and would load the loop being measured."""
        if self._ro is None:
            self._ro = sqlite3.connect(f"file:{self.paths.journal}?mode=ro", uri=True, timeout=30.0)
        return int(self._ro.execute("SELECT count(*) FROM jobs WHERE state = 'running'").fetchone()[0])

    def wait_running(self, n: int, timeout: float = 120.0, poll: float = 0.5) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            count = self.running_count()
            if count >= n:
                return self.live()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {count} of {n} children running after {timeout} s "
                                   f"({len(self.events('kill'))} kills logged); see {self.log_path}")
            time.sleep(poll)

    def grow_to(self, n: int, step: int = 50, timeout: float = 180.0) -> float:
        """Raise the slots to `n` in small steps, each waited for, so that the
        figure measures a steady state rather than a burst of forks (a big
        burst costs healthy children their beats: see PROFILE.md, "Spawn
        burst"). Returns the seconds taken."""
        t0 = time.monotonic()
        current = self.workers or 0
        while current < n:
            current = min(n, current + step)
            self.set_workers(current)
            self.wait_running(current, timeout=timeout, poll=0.2)
        return time.monotonic() - t0


def beating_master(registry: Registry, state_dir: Path, n: int, params: dict[str, Any] | None = None) -> PhoenixMaster:
    """A master of bench.apps:beat_app with no slots yet, `n` beating jobs
    (bench.apps:beat, an hour each) in its journal, started and ready: grow
    it with grow_to or set_workers."""
    master = PhoenixMaster(registry, state_dir, "bench.apps:beat_app", workers=0, use_config_file=True)
    master.submit_many(("bench.apps:beat", {"s": 3600, **(params or {})}, f"beat-{i}") for i in range(n))
    master.start()  # returns once the master logs that it is ready
    return master
