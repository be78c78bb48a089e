"""Throughput: N no-op jobs through 2 slots, one fresh process per job, timed
from the start of the command to its exit (interpreter start-up included
for every contender alike).

    Phoenix   `phoenix start bench.apps:noop_app --workers 2 --exit-when-done`
              on a fresh state directory whose journal (SQLite WAL, on disk)
              already holds the N jobs
    Pool      multiprocessing.Pool(2, maxtasksperchild=1).map over N tasks
    RQ        two `rq worker --burst` on a queue already holding N jobs
              (a private redis-server on 127.0.0.1), when redis-server exists
    bare fork os.fork / os._exit(0) / waitpid, 2 at a time: the ceiling
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.master import PhoenixMaster
from bench.procs import PYTHON, Registry, free_port, loadavg, tool


def wait_with_cpu(proc: "subprocess.Popen[Any]", timeout: float) -> tuple[int, float]:
    """(exit code, CPU seconds of the process and every descendant it reaped,
    and they theirs): wait4's rusage. On a machine shared with other work the
    wall time depends on the load; the CPU a contender needs per job is what
    decides its throughput when the cores are the bottleneck."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {proc.pid} did not exit within {timeout} s")
        time.sleep(0.005)


def _timed(reg: Registry, argv: list[str], log: Path, timeout: float) -> tuple[float, float]:
    t0 = time.monotonic()
    proc = reg.popen(argv, log=log)
    code, cpu = wait_with_cpu(proc, timeout)
    elapsed = time.monotonic() - t0
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {code}; see {log}")
    return elapsed, cpu


def phoenix_once(reg: Registry, work: Path, n: int, rep: int) -> dict[str, Any]:
    state = work / f"tp{rep}"
    master = PhoenixMaster(reg, state, "bench.apps:noop_app", workers=2, extra_flags=["--exit-when-done"])
    master.submit_many(("bench.apps:noop", i, f"noop-{i}") for i in range(n))
    t0 = time.monotonic()
    master.start(wait_ready=False)  # timed to the end of the run, not to ready
    assert master.proc is not None
    code, cpu = wait_with_cpu(master.proc, 600)
    elapsed = time.monotonic() - t0
    counts = master.counts()
    if code != 0 or counts["finished"] != n:
        raise RuntimeError(f"phoenix run failed: exit {code}, counts {counts}; see {master.log_path}")
    return {"seconds": elapsed, "cpu": cpu, "log": str(master.log_path)}


def rq_once(reg: Registry, work: Path, n: int, slots: int) -> dict[str, Any]:
    import redis
    import rq

    port = free_port()
    server = reg.popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--protected-mode", "yes"], log=work / "redis.log")
    try:
        conn = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                conn.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"redis-server did not start; see {work / 'redis.log'}") from None
                time.sleep(0.05)
        from bench.apps import rq_noop

        queue = rq.Queue("bench", connection=conn)
        with conn.pipeline() as pipe:
            for _ in range(n):
                queue.enqueue(rq_noop, pipeline=pipe)
            pipe.execute()
        t0 = time.monotonic()
        workers = [reg.popen([tool("rq"), "worker", "--burst", "--url", f"redis://127.0.0.1:{port}", "bench"],
                             log=work / f"rq-worker{i}.log") for i in range(slots)]
        for w in workers:
            if w.wait(timeout=900) != 0:
                raise RuntimeError(f"rq worker exited with {w.returncode}; see {work}/rq-worker*.log")
        elapsed = time.monotonic() - t0
        finished = queue.finished_job_registry.count
        if finished != n:
            raise RuntimeError(f"rq finished {finished} of {n} jobs")
        conn.close()
        return {"seconds": elapsed}
    finally:
        reg.stop(server.pid)


def run(reg: Registry, work: Path, n: int, reps: int, with_rq: bool, say: Any) -> dict[str, Any]:
    slots = 2
    results: dict[str, list[float]] = {"phoenix": [], "pool": [], "bare": []}
    cpu: dict[str, list[float]] = {"phoenix": [], "pool": [], "bare": []}
    loads: list[str] = []
    for rep in range(reps):
        loads.append(loadavg())
        say(f"throughput rep {rep + 1}/{reps}: phoenix ({n} jobs) [load {loads[-1]}]")
        once = phoenix_once(reg, work, n, rep)
        results["phoenix"].append(once["seconds"])
        cpu["phoenix"].append(once["cpu"])
        for name in ("pool", "fork"):
            say(f"throughput rep {rep + 1}/{reps}: {name}")
            wall, used = _timed(reg, [PYTHON, "-m", "bench.bare", name, str(n), str(slots)], work / f"{name}.log", 600)
            results["pool" if name == "pool" else "bare"].append(wall)
            cpu["pool" if name == "pool" else "bare"].append(used)
    rq_note = None
    if with_rq and shutil.which("redis-server"):
        say(f"throughput: rq worker --burst x{slots} ({n} jobs)")
        results["rq"] = [rq_once(reg, work, n, slots)["seconds"]]
    elif with_rq:
        rq_note = "skipped: no redis-server binary on PATH (apt-get install redis-server)"
    else:
        rq_note = "skipped (--no-rq)"
    best = {k: min(v) for k, v in results.items()}
    middle = {k: statistics.median(v) for k, v in results.items()}
    # Each repetition ran Phoenix, the Pool and the bare loop back to back:
    # their ratio within one repetition saw the same load.
    per_rep = {k: [results[k][i] / results["phoenix"][i] for i in range(reps)] for k in ("pool", "bare")}
    return {"n": n, "slots": slots, "reps": reps, "all": results, "best": best, "median": middle,
            "jobs_per_s": {k: n / v for k, v in middle.items()}, "ratio_per_rep": per_rep, "rq_note": rq_note,
            "cpu": cpu, "cpu_ms_per_job": {k: statistics.median(v) / n * 1000 for k, v in cpu.items()},
            "loads": loads}
