"""Driving a Phoenix master from the benchmarks: a fresh state directory,
jobs written to the journal before the master starts, `phoenix start` as a
subprocess (its log in STATE/master.log), live status over the control socket
(what `phoenix status --json` reads), and slots changed through a config file
and SIGHUP so one master can grow from 100 to 2,000 children."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from phoenix import control
from phoenix.journal import Journal
from phoenix.paths import StatePaths

from bench.procs import LogEvent, Registry, parse_log, tool


class PhoenixMaster:
    def __init__(self, registry: Registry, state_dir: Path, app: str, *, workers: int | None = None,
                 extra_flags: Iterable[str] = (), use_config_file: bool = False) -> None:
        self.registry = registry
        self.paths = StatePaths(state_dir)
        self.paths.ensure()
        self.app = app
        self.log = self.paths.root / "master.log"
        self.config_file = self.paths.root / "bench.toml" if use_config_file else None
        self.workers = workers
        self.extra_flags = list(extra_flags)
        self.proc: Any = None
        self.known_children: set[int] = set()
        self._ro: sqlite3.Connection | None = None

    # -- jobs ---------------------------------------------------------------------

    def submit_many(self, jobs: Iterable[tuple[str, Any, str]]) -> None:
        """(target, params, key) triples, written in one transaction before the
        master starts (setup, not timed)."""
        journal = Journal(self.paths.journal)
        try:
            journal.submit_many((target, json.dumps(params, separators=(",", ":")), key) for target, params, key in jobs)
        finally:
            journal.close()

    def counts(self) -> dict[str, int]:
        journal = Journal(self.paths.journal)
        try:
            return journal.counts()
        finally:
            journal.close()

    # -- life -----------------------------------------------------------------------

    def argv(self) -> list[str]:
        argv = [tool("phoenix"), "start", self.app, "--state-dir", str(self.paths.root)]
        if self.workers is not None and self.config_file is None:
            argv += ["--workers", str(self.workers)]
        if self.config_file is not None:
            self.write_config(self.workers or 1)
            argv += ["--config", str(self.config_file)]
        return argv + self.extra_flags

    def write_config(self, workers: int) -> None:
        assert self.config_file is not None
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(f"[phoenix]\nworkers = {workers}\n")
        os.rename(tmp, self.config_file)

    def start(self) -> None:
        self.proc = self.registry.popen(self.argv(), log=self.log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"phoenix master exited with {self.proc.returncode}; see {self.log}")
            try:
                return self.status()
            except control.ControlError:
                time.sleep(0.05)
        raise RuntimeError(f"phoenix master not ready after {timeout} s; see {self.log}")

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """The live status (`phoenix status --json` reads the same control request)."""
        reply = control.request(self.paths.control_socket, {"cmd": "status"}, timeout=timeout)
        pids = {int(r["pid"]) for r in reply.get("running", {}).values()}
        new = pids - self.known_children
        if new:
            self.registry.add_many(new)
            self.known_children |= new
        return reply

    def set_workers(self, workers: int) -> None:
        """Change the slots: rewrite the config file and SIGHUP (reload config)."""
        self.write_config(workers)
        os.kill(self.pid, signal.SIGHUP)
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
                return self.status()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {count} of {n} children running after {timeout} s "
                                   f"({len(self.events('kill'))} kills logged); see {self.log}")
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

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """TERM the master (it TERMs its children and waits up to kill_grace);
        anything left afterwards is stopped by pid."""
        try:
            self.status(timeout=5.0)  # register the children running now, to stop any survivor by pid
        except Exception:  # noqa: BLE001 - the master may be gone already
            pass
        if self.proc is not None and self.proc.poll() is None:
            self.registry.stop(self.pid, timeout=timeout)
        for pid in sorted(self.known_children):
            self.registry.stop(pid, timeout=2.0, sig=signal.SIGKILL)

    def events(self, name: str | None = None, since: float = 0.0) -> list[LogEvent]:
        return [e for e in parse_log(self.log) if (name is None or e.name == name) and e.at >= since]


def beating_master(registry: Registry, state_dir: Path, n: int, params: dict[str, Any] | None = None) -> PhoenixMaster:
    """A master of bench.apps:beat_app with no slots yet, `n` beating jobs
    (bench.apps:beat, an hour each) in its journal, started and ready: grow
    it with grow_to or set_workers."""
    master = PhoenixMaster(registry, state_dir, "bench.apps:beat_app", workers=0, use_config_file=True)
    master.submit_many(("bench.apps:beat", {"s": 3600, **(params or {})}, f"beat-{i}") for i in range(n))
    master.start()
    master.wait_ready()
    return master
