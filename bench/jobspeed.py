"""The job's own speed: a pure-Python job under Phoenix against the same
function in a bare forked child.

    python -m bench.jobspeed                     # 2 s jobs, 5 rounds (~1 minute)
    python -m bench.jobspeed --seconds 0.3 --rounds 2
    python -m bench --only jobspeed              # the same, into RESULTS.md

Two jobs (bench/speed_jobs.py): `spin`, CPU-bound pure Python (integer
arithmetic, allocating nothing), and `churn`, allocation-heavy (small dicts,
lists and strings built and dropped, a reference cycle, a 256 KiB buffer
every 8th unit), each sized to about --seconds of CPU here. Both call
phoenix.heartbeat() 1,000 times a second, a stand-in for progress() (which
does not exist yet); outside Phoenix the call does nothing.

Under Phoenix the function runs as a job of `bench.speed_jobs:speed_app`
(heartbeat_interval=0.2, one slot, a stall timeout so that its progress is
watched), submitted once the previous run has ended; bare, it runs in a
child os.fork()ed from a fresh interpreter that imported only
bench.speed_jobs, as Phoenix's fork server imported only the app. Contenders alternate, the first of
each round swapped each round. The figure is the function's wall time,
timed inside the child around the work: fork, set-up and exit are not in
it, only what the job's own code sees while it runs (the GIL shared with
the heartbeat thread, the master beside it). Speed ratio: bare seconds /
Phoenix seconds (1.0: as fast as bare), of the medians and per round; and
the same less the job thread's wait for a CPU (the machine's load, which on
a shared machine dwarfs what is measured) and by CPU time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench.master import PhoenixMaster
from bench.procs import PYTHON, Registry, descendants, loadavg
from bench.speed_jobs import work
from phoenix.wire import control

KINDS = ("spin", "churn")
BEAT_HZ = 1000
TARGET = 0.98  # at least this fraction of the bare speed


def size(kind: str, seconds: float) -> int:
    """Units of `kind` for about `seconds` of CPU here, from a short run
    in this process (CPU time, not wall: a busy machine stretches the wall
    time of the sizing run, not its CPU)."""
    probe = 400
    while True:
        cpu = work({"kind": kind, "units": probe, "beat_hz": BEAT_HZ})["cpu"]
        if cpu >= 0.1:
            return max(1, int(probe * seconds / cpu))
        probe *= 4


def _read(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return result


def run_bare(reg: Registry, params: dict[str, Any], out: Path, timeout: float) -> dict[str, Any]:
    """The function in a child forked from a fresh interpreter that imported
    only bench.speed_jobs (python -m bench.speed_jobs)."""
    log = out.with_suffix(".bare.log")
    proc = reg.popen([PYTHON, "-m", "bench.speed_jobs", json.dumps({**params, "out": str(out)})], log=log)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not descendants(proc.pid):  # its child joins the registry, to be stopped by pid
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bare run did not fork; see {log}")
        time.sleep(0.05)
    reg.add_many(descendants(proc.pid))
    if proc.wait(timeout=max(0.0, deadline - time.monotonic())) != 0:
        raise RuntimeError(f"the bare run exited with {proc.returncode}; see {log}")
    return _read(out)


def run_phoenix(master: PhoenixMaster, params: dict[str, Any], out: Path, key: str, timeout: float) -> dict[str, Any]:
    master.submit_many([("bench.speed_jobs:measured", {**params, "out": str(out)}, key)])
    control.request(master.paths.control_socket, {"cmd": "wake"}, timeout=5.0)
    deadline = time.monotonic() + timeout
    while not out.exists():
        if time.monotonic() > deadline or master.proc is None or master.proc.poll() is not None:
            raise RuntimeError(f"job {key} wrote no result within {timeout:.0f} s; see {master.log_path}")
        time.sleep(0.05)
    while master.running_count():  # its child gone before the next contender starts
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {key} did not end; see {master.log_path}")
        time.sleep(0.02)
    return _read(out)


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def run(reg: Registry, work_dir: Path, rounds: int, seconds: float, say: Callable[[str], None]) -> dict[str, Any]:
    units = {kind: size(kind, seconds) for kind in KINDS}
    say(f"job speed: {', '.join(f'{k} {u:,} units' for k, u in units.items())} (about {seconds:g} s each)")
    master = PhoenixMaster(reg, work_dir / "jobspeed", "bench.speed_jobs:speed_app", workers=1)
    master.start()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {k: {"phoenix": [], "bare": []} for k in KINDS}
    loads: list[str] = []
    out = work_dir / "jobspeed-result.json"
    try:
        for rnd in range(rounds):
            loads.append(loadavg())
            say(f"job speed round {rnd + 1}/{rounds} [load {loads[-1]}]")
            order = ("phoenix", "bare") if rnd % 2 == 0 else ("bare", "phoenix")
            for kind in KINDS:
                params = {"kind": kind, "units": units[kind], "beat_hz": BEAT_HZ}
                for who in order:
                    if who == "phoenix":
                        result = run_phoenix(master, params, out, f"{kind}-{rnd}", timeout=60 + 20 * seconds)
                    else:
                        result = run_bare(reg, params, out, timeout=60 + 20 * seconds)
                    if result["under_phoenix"] != (who == "phoenix"):  # the comparison is what it says
                        raise RuntimeError(f"the {who} run of {kind} ran {'' if result['under_phoenix'] else 'not '}"
                                           "under Phoenix")
                    runs[kind][who].append(result)
    finally:
        master.stop()
    figures: dict[str, Any] = {}
    for kind in KINDS:
        ph = [r["seconds"] for r in runs[kind]["phoenix"]]
        bare = [r["seconds"] for r in runs[kind]["bare"]]
        figures[kind] = {
            "phoenix_s": summary(ph), "bare_s": summary(bare),
            "ratio": statistics.median(bare) / statistics.median(ph),
            # The wall time less the main thread's wait for a CPU: on a machine
            # loaded by other work that wait is most of the spread, and it is
            # the machine's; what is left is the job's own time, the waits for
            # the GIL (Phoenix's heartbeat thread) included.
            "unqueued_phoenix_s": summary([r["unqueued_seconds"] for r in runs[kind]["phoenix"]]),
            "unqueued_bare_s": summary([r["unqueued_seconds"] for r in runs[kind]["bare"]]),
            "unqueued_ratio": (statistics.median(r["unqueued_seconds"] for r in runs[kind]["bare"])
                               / statistics.median(r["unqueued_seconds"] for r in runs[kind]["phoenix"])),
            "unqueued_ratio_per_round": summary([b["unqueued_seconds"] / p["unqueued_seconds"] for b, p in
                                                 zip(runs[kind]["bare"], runs[kind]["phoenix"], strict=True)]),
            # The same from CPU time (every thread of the child): what Phoenix
            # costs the job itself, whatever the load did to the wall time.
            "cpu_ratio": (statistics.median(r["cpu"] for r in runs[kind]["bare"])
                          / statistics.median(r["cpu"] for r in runs[kind]["phoenix"])),
            "ratio_per_round": summary([b / p for b, p in zip(bare, ph, strict=True)]),
            "phoenix_cpu_s": summary([r["cpu"] for r in runs[kind]["phoenix"]]),
            "bare_cpu_s": summary([r["cpu"] for r in runs[kind]["bare"]]),
            # Per second the job ran (its own time): a job waiting for a CPU makes no calls.
            "progress_per_s": statistics.median(r["beats"] / r["unqueued_seconds"] for r in runs[kind]["phoenix"]),
        }
    return {"rounds": rounds, "seconds": seconds, "units": units, "beat_hz": BEAT_HZ, "figures": figures,
            "runs": runs, "loads": loads, "load_end": loadavg()}


NAMES = {"spin": "CPU-bound pure Python", "churn": "allocation-heavy"}


def rows(r: dict[str, Any], row: Callable[..., Any], ok: Callable[..., bool | None]) -> list[Any]:
    """The table rows (bench.report.Row) of a run's result. The verdict is
    taken on the time less the job thread's wait for a CPU: on this shared
    machine that wait is other work's doing and moves the wall time by tens
    of per cent between rounds either way; on a quiet machine the two are
    the same."""
    out = []
    for kind, f in r["figures"].items():
        ph, bare = f["unqueued_phoenix_s"], f["unqueued_bare_s"]
        per, wall = f["unqueued_ratio_per_round"], f["ratio_per_round"]
        out.append(row(f"job speed: {NAMES[kind]} job (~{r['seconds']:g} s), heartbeat_interval=0.2, "
                       f"progress {r['beat_hz']:,}/s, {r['rounds']} rounds alternated; time less the wait for a CPU",
                       f"{ph['median']:.3f} s (min {ph['min']:.3f}, max {ph['max']:.3f})",
                       "the same function in a bare forked child",
                       f"{bare['median']:.3f} s (min {bare['min']:.3f}, max {bare['max']:.3f})",
                       f"{f['unqueued_ratio']:.3f}x the bare speed", f">= {TARGET}x the bare speed",
                       ok(f["unqueued_ratio"], TARGET, below=False),
                       f"per round {per['min']:.3f}x-{per['max']:.3f}x; wall time {f['ratio']:.3f}x "
                       f"({f['phoenix_s']['median']:.3f} s against {f['bare_s']['median']:.3f} s, per round "
                       f"{wall['min']:.3f}x-{wall['max']:.3f}x); by CPU time {f['cpu_ratio']:.3f}x; "
                       f"{f['progress_per_s']:.0f} progress calls per second run; "
                       f"load {r['loads'][0]} -> {r['load_end']}"))
    return out


def details(r: dict[str, Any]) -> list[str]:
    lines = [f"### The job's own speed ({r['rounds']} rounds, contenders alternated)", "",
             "The function's wall time timed inside the child (bench/jobspeed.py); 'less CPU wait' is that wall time "
             "less the time the job's thread was runnable but waiting for a CPU (/proc/thread-self/schedstat: the "
             "machine's load, not the job's or Phoenix's doing); CPU is the child's process CPU time, every thread "
             "(Phoenix's heartbeat thread included).", "",
             "| job | contender | runs (s) | min | median | max | less CPU wait, median (s) | CPU median (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind, f in r["figures"].items():
        for who in ("phoenix", "bare"):
            s = f[f"{who}_s"]
            runs = ", ".join(f"{x['seconds']:.3f}" for x in r["runs"][kind][who])
            lines.append(f"| {kind} ({r['units'][kind]:,} units) | {who} | {runs} | {s['min']:.3f} | "
                         f"{s['median']:.3f} | {s['max']:.3f} | {f[f'unqueued_{who}_s']['median']:.3f} | "
                         f"{f[f'{who}_cpu_s']['median']:.3f} |")
    lines += ["", f"Load average (1, 5, 15 min) at the start of each round: {'; '.join(r['loads'])}; "
              f"at the end: {r['load_end']}.", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobspeed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each running every job both ways")
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds of each job here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds above 0")

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    from bench.report import Row

    def ok(value: float, limit: float, below: bool = True) -> bool:
        return value <= limit if below else value >= limit

    reg = Registry()
    work_dir = Path(tempfile.mkdtemp(prefix="phxb-speed-", dir="/tmp"))
    try:
        result = run(reg, work_dir, args.rounds, args.seconds, say)
    finally:
        left = reg.cleanup()
        if left:
            say(f"stopped {len(left)} leftover process(es) by pid: {left}")
    for r in rows(result, Row, ok):
        print(f"{r.figure}: Phoenix {r.phoenix}; bare {r.peer_value}; {r.ratio} "
              f"({'met' if r.met else 'MISSED'} {r.target}); {r.note}")
    print("\n".join(details(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
