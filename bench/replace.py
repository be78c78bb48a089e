"""Replacement: how long the heartbeat socket goes unread when the master
replaces itself on SIGUSR2, with N children running, against gunicorn's own
USR2 on a trivial WSGI app.

Phoenix (in place, the default): USR2 -> preflight (`phoenix check` in a
throwaway process; the old image keeps reading beats meanwhile) -> `exec`
logged -> execve -> the new image imports, rebuilds its sockets, adopts the
children, drains the queued datagrams -> `ready generation=N` logged. The
blind window is exec -> ready, from the master's own millisecond timestamps;
it includes the new interpreter's start-up and imports (from bytecode, see
compile_bytecode), the app's import among them. The app's own import time is
measured apart (a fresh interpreter that has imported phoenix, timing
`import bench.apps`) and subtracted for the headline, as the issue asks.
Lost beats: each child counts the beats it could not send
(bench.apps._count_sends); false kills: `kill` lines in the log.

gunicorn: `gunicorn bench.apps:wsgi_app` bound to 127.0.0.1, USR2 -> the new
master's pidfile (gunicorn 21+ writes PIDFILE.2; older ones rename the old
pidfile to .oldbin and write PIDFILE): polled every millisecond. Its rounds
alternate with Phoenix's, while Phoenix's children run, so that both meet the
same conditions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.master import beating_master
from bench.procs import PYTHON, REPO, Registry, descendants, env, free_port, loadavg, median, tool
from phoenix.linux.pidfile import read_pid


def app_import_seconds(runs: int = 5) -> dict[str, float]:
    """Import time of the app module alone (phoenix already imported), and of
    a whole `phoenix check` (interpreter, imports, configuration)."""
    code = ("import time, phoenix, phoenix.cli.main, phoenix.master.arbiter; t = time.perf_counter(); "
            "import bench.apps; print(time.perf_counter() - t)")
    app_only = []
    for _ in range(runs):
        out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO, env=env(), check=True)
        app_only.append(float(out.stdout.strip()))
    check = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([tool("phoenix"), "check", "bench.apps:beat_app"], capture_output=True, cwd=REPO, env=env(),
                       check=True)
        check.append(time.monotonic() - t0)
    bare = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([PYTHON, "-c", "pass"], capture_output=True, cwd=REPO, env=env(), check=True)
        bare.append(time.monotonic() - t0)
    return {"app_import_s": median(app_only), "phoenix_check_s": median(check), "python_startup_s": median(bare)}


def compile_bytecode() -> None:
    """Bytecode for the tree both sides run, as a (non-editable) pip install
    writes at install time and deploy.sh writes for a release. gunicorn, pip
    installed, has it; without this an editable checkout under
    PYTHONDONTWRITEBYTECODE=1 (this machine's environment) compiles all of
    Phoenix from source in every new image: about 45 % of its imports' CPU."""
    subprocess.run([PYTHON, "-m", "compileall", "-q", "phoenix", "bench"], cwd=REPO, env=env(), check=True,
                   stdout=subprocess.DEVNULL)


def _beat_counts(count_dir: Path) -> tuple[int, int, int]:
    """(delivered, lost, waited) summed over the children (bench.apps._count_sends)."""
    totals = [0, 0, 0]
    for f in count_dir.iterdir():
        if f.suffix:
            continue
        try:
            values = [int(v) for v in f.read_text().split()]
        except (OSError, ValueError):
            continue
        if len(values) == 3:
            totals = [t + v for t, v in zip(totals, values, strict=True)]
    return totals[0], totals[1], totals[2]


def run(reg: Registry, work: Path, n: int, rounds: int, say: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Phoenix and gunicorn replacements, alternated round by round so that
    both meet the same background load (the N beating children included)."""
    compile_bytecode()
    gunicorn = Gunicorn(reg, work)
    gunicorn.start()
    try:
        phoenix = run_phoenix(reg, work, n, rounds, say, before_each=lambda i: (
            say(f"replacement: gunicorn USR2 {i + 1}/{rounds} [load {loadavg()}]"), gunicorn.usr2_round()))
    finally:
        gunicorn.stop()
    return phoenix, gunicorn.result()


def run_phoenix(reg: Registry, work: Path, n: int, rounds: int, say: Any,
                before_each: Any = None) -> dict[str, Any]:
    state = work / "replace"
    count_dir = state / "counts"
    count_dir.mkdir(parents=True, exist_ok=True)
    master = beating_master(reg, state, n, {"count_dir": str(count_dir)})
    say(f"replacement: growing to {n} beating children [load {loadavg()}]")
    master.grow_to(n)
    time.sleep(1.5)
    out: dict[str, Any] = {"n": n, "rounds": []}
    try:
        before = master.live()
        pids_before = {r["pid"] for r in before["running"].values()}
        delivered0, lost0, waited0 = _beat_counts(count_dir)
        t_first = time.time()
        generation = before["master"]["generation"]
        for i in range(rounds):
            if before_each is not None:
                before_each(i)
                time.sleep(0.5)
            say(f"replacement: USR2 {i + 1}/{rounds} with {n} children (generation {generation} -> {generation + 1})")
            t_usr2 = time.time()
            os.kill(master.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 60
            while True:
                try:
                    st = master.live(timeout=2.0)
                    if st["master"]["generation"] > generation:
                        break
                except Exception:  # noqa: BLE001 - between images
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no new generation after USR2; see {master.log_path}")
                time.sleep(0.02)
            events = master.events(since=t_usr2 - 0.001)
            exec_at = next(e.at for e in events if e.name == "exec")
            ready_at = next(e.at for e in events if e.name == "ready" and int(e.fields["generation"]) == generation + 1)
            pre = next((e for e in events if e.name == "preflight_ok"), None)
            adopts = [e.at for e in events if e.name == "adopt" and e.at <= ready_at + 0.001]
            first_new = next((e.at for e in events if e.at >= exec_at and e.name != "exec"), ready_at)
            out["rounds"].append({
                "usr2_to_exec_s": exec_at - t_usr2,
                "blind_s": ready_at - exec_at,
                "usr2_to_ready_s": ready_at - t_usr2,
                "preflight_s": float(pre.fields["took"].rstrip("s")) if pre else None,
                "adopted": len(adopts),
                # where the blind window goes, from the new image's own log lines
                "exec_to_first_line_s": first_new - exec_at,  # interpreter, imports, journal, sockets
                "adopting_s": (adopts[-1] - adopts[0]) if adopts else 0.0,
                "last_adopt_to_ready_s": (ready_at - adopts[-1]) if adopts else 0.0,
            })
            generation += 1
            time.sleep(1.0)
        time.sleep(1.0)  # let every child write its counts after the last round
        after = master.live()
        delivered1, lost1, waited1 = _beat_counts(count_dir)
        pids_after = {r["pid"] for r in after["running"].values()}
        out.update(
            lost_beats=lost1 - lost0,
            beats_sent=delivered1 - delivered0,
            beats_waited=waited1 - waited0,
            false_kills=len(master.events("kill", since=t_first)),
            children_kept=len(pids_before & pids_after),
            rejected=after["master"].get("rejected", {}),
            log=str(master.log_path),
        )
    finally:
        say("replacement: stopping the phoenix master and its children")
        master.stop()
    blind = [r["blind_s"] for r in out["rounds"]]
    out["blind_s_median"] = median(blind)
    out["usr2_to_ready_s_median"] = median([r["usr2_to_ready_s"] for r in out["rounds"]])
    out["usr2_to_exec_s_median"] = median([r["usr2_to_exec_s"] for r in out["rounds"]])
    return out


class Gunicorn:
    """A gunicorn master serving bench.apps:wsgi_app on 127.0.0.1; each
    usr2_round() times USR2 -> the new master's pidfile, then completes the
    upgrade as an operator would (TERM the old master)."""

    def __init__(self, reg: Registry, work: Path) -> None:
        self.reg = reg
        self.dir = work / "gunicorn"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pidfile = self.dir / "gunicorn.pid"
        self.log = self.dir / "gunicorn.log"
        self.masters: list[int] = []
        self.current = 0
        self.times: list[float] = []

    def start(self) -> None:
        port = free_port()
        argv = [tool("gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--pid", str(self.pidfile),
                "--chdir", str(REPO), "bench.apps:wsgi_app"]
        proc = self.reg.popen(argv, log=self.log)
        self.masters.append(proc.pid)
        deadline = time.monotonic() + 30
        while read_pid(self.pidfile) != proc.pid:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"gunicorn did not start; see {self.log}")
            time.sleep(0.01)
        time.sleep(0.5)
        self.reg.add_many(descendants(proc.pid))
        self.current = proc.pid

    def usr2_round(self) -> float:
        new_pidfile = self.pidfile.with_name(self.pidfile.name + ".2")
        oldbin = self.pidfile.with_name(self.pidfile.name + ".oldbin")
        t0 = time.monotonic()
        os.kill(self.current, signal.SIGUSR2)
        new = None
        deadline = t0 + 30
        while new is None:
            p2 = read_pid(new_pidfile)
            p1 = read_pid(self.pidfile)
            if p2 is not None and p2 != self.current:
                new = p2  # gunicorn >= 21: the new master writes PIDFILE.2
            elif p1 is not None and p1 != self.current and oldbin.exists():
                new = p1  # older gunicorn: old pidfile renamed to .oldbin, new one written
            elif time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn wrote no new pidfile; see {self.log}")
            else:
                time.sleep(0.001)
        elapsed = time.monotonic() - t0
        self.times.append(elapsed)
        self.reg.add(new)
        self.masters.append(new)
        time.sleep(1.0)  # its worker up
        self.reg.add_many(descendants(new))
        self.reg.add_many(descendants(self.current))
        self.reg.stop(self.current, timeout=30)
        deadline = time.monotonic() + 30
        while read_pid(self.pidfile) != new and time.monotonic() < deadline:
            time.sleep(0.01)
        self.current = new
        return elapsed

    def stop(self) -> None:
        for pid in reversed(self.masters):
            self.reg.add_many(descendants(pid))
            self.reg.stop(pid, timeout=30)

    def result(self) -> dict[str, Any]:
        return {"rounds": self.times, "usr2_to_pidfile_s_median": median(self.times)}
