"""Throughput: N no-op jobs through 2 slots, one fresh process per job, timed
from the start of the command to its exit (interpreter start-up included
for every contender alike).

    Phoenix   `phoenix start bench.apps:noop_app --workers 2 --exit-when-done`
              on a fresh state directory whose journal (SQLite WAL, on disk)
              already holds the N jobs
    Pool      multiprocessing.Pool(2, maxtasksperchild=1).map over N tasks
    RQ        two `rq worker --burst` on a queue already holding N jobs
              (a private redis-server on 127.0.0.1), when redis-server exists,
              timed to the end of the last job (RQ's job records)
    bare fork os.fork / os._exit(0) / waitpid, 2 at a time: the ceiling
    batch     as a user runs a batch: `phoenix start bench.apps:batch_app
              --exit-when-done` on an empty state directory, its startup hook
              submitting the N jobs, an on_finished callback on every job
              (batch_cb) and the same app without it (batch)

Every contender runs once per repetition, alternated. Before the
repetitions each peer is calibrated alone (its own account of its work, on
a short batch); a peer whose rate in the run is far off its calibration is
reported as "peer run suspect" rather than backing a ratio (peer_checks).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
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


def phoenix_batch_once(reg: Registry, work: Path, n: int, rep: int, callback: bool) -> dict[str, Any]:
    """As a user runs a batch: `phoenix start bench.apps:batch_app --exit-when-done`
    on an empty state directory, its startup hook submitting the n jobs (one
    Client.submit_many), an on_finished callback on every job (`callback`),
    or the same app without it."""
    from bench import apps

    state = work / f"batch{'-cb' if callback else ''}{rep}"
    master = PhoenixMaster(reg, state, "bench.apps:batch_app", workers=2, extra_flags=["--exit-when-done"])
    master.env.update({apps.BATCH_JOBS: str(n), apps.BATCH_STATE_DIR: str(state),
                       apps.BATCH_CALLBACK: "1" if callback else "0"})
    t0 = time.monotonic()
    master.start(wait_ready=False)
    assert master.proc is not None
    code, cpu = wait_with_cpu(master.proc, 600)
    elapsed = time.monotonic() - t0
    counts = master.counts()
    if code != 0 or counts["finished"] != n:
        raise RuntimeError(f"phoenix batch run failed: exit {code}, counts {counts}; see {master.log_path}")
    if callback:
        with sqlite3.connect(f"file:{master.paths.journal}?mode=ro", uri=True) as db:
            done = db.execute("SELECT count(*) FROM callbacks WHERE state = 'done'").fetchone()[0]
        if done != n:
            raise RuntimeError(f"phoenix batch run: {done} callbacks done of {n}; see {master.log_path}")
    return {"seconds": elapsed, "cpu": cpu, "log": str(master.log_path)}


# After its last job an `rq worker --burst` should exit at once. RQ 3.0.0
# with redis-py >= 8.2 often does not: its teardown sends UNSUBSCRIBE, then
# calls PubSubWorkerThread.stop(), which since redis-py 8.2 joins the thread
# with no timeout (8.1 only cleared a flag, and RQ's own join waits 1 s). If
# the thread reads the UNSUBSCRIBE reply before stop() clears its flag (a
# race it often wins), its next get_message waits RQ's full 60 s for a
# subscription that never comes, and stop() waits with it. Timed to the
# workers' exit, 200 jobs took 63.7 s. So the figure is timed to the end of
# the last job (RQ's own record of it), and a worker still in its teardown
# RQ_EXIT_GRACE seconds after the last job is killed (it has nothing left to
# do; its CPU is still counted).
RQ_EXIT_GRACE = 2.0

# Calibration: each peer alone on this many jobs (fewer if the figure has fewer).
CALIBRATION_JOBS = 100

# A peer's figure backs a ratio only if it is within this factor of what
# its calibration predicts (peer_checks). The load of this shared machine
# moves a peer's rate by up to about 1.5x between minutes (the
# repetitions' spread in RESULTS.md), and a peer's exit after its work
# (not in the prediction) is a few per cent of a run; a factor of 2 is
# beyond both. What it is there to catch is far larger: timed to the
# workers' exit, the 60 s teardown above made RQ's figure some 12x its
# prediction (200 jobs: 63.7 s; RQ alone here predicts about 5 s).
SUSPECT_FACTOR = 2.0


def start_redis(reg: Registry, work: Path) -> tuple[Any, int]:
    """A private redis-server on 127.0.0.1 (no persistence), and its port."""
    import redis

    port = free_port()
    server = reg.popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--protected-mode", "yes"], log=work / "redis.log")
    conn = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            conn.ping()
            return server, port
        except redis.ConnectionError:
            if time.monotonic() > deadline or server.poll() is not None:
                reg.stop(server.pid)
                raise RuntimeError(f"redis-server did not start; see {work / 'redis.log'}") from None
            time.sleep(0.05)
        finally:
            conn.close()


def _reap_worker(reg: Registry, proc: "subprocess.Popen[Any]", deadline: float) -> tuple[float | None, float]:
    """(seconds after `deadline` - RQ_EXIT_GRACE at which it exited, or None
    if it was still in its teardown at the deadline and was killed; CPU
    seconds of the worker and the work horses it reaped)."""
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise RuntimeError(f"rq worker {proc.pid} exited with {proc.returncode}")
            return time.monotonic() - (deadline - RQ_EXIT_GRACE), usage.ru_utime + usage.ru_stime
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # our unreaped child: its pid cannot have been reused
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reg.stop(proc.pid)  # already gone: only the registry's bookkeeping
    return None, usage.ru_utime + usage.ru_stime


def rq_once(reg: Registry, work: Path, port: int, n: int, slots: int, tag: str) -> dict[str, Any]:
    """`slots` x `rq worker --burst` (RQ's default worker: a work horse forked
    per job) on a queue already holding `n` no-op jobs. Seconds from starting
    the workers to the end of the last job, from RQ's job records;
    `startup_seconds` to the first job's start, `work_seconds` from there to
    the last job's end (RQ's own account of the work)."""
    import redis
    import rq
    from rq.job import Job

    from bench.rq_tasks import noop

    conn = redis.Redis(host="127.0.0.1", port=port)
    try:
        conn.flushdb()
        queue = rq.Queue("bench", connection=conn)
        with conn.pipeline() as pipe:
            ids = [queue.enqueue(noop, pipeline=pipe).id for _ in range(n)]
            pipe.execute()
        wall0, t0 = time.time(), time.monotonic()
        workers = [reg.popen([tool("rq"), "worker", "--burst", "--url", f"redis://127.0.0.1:{port}", "bench"],
                             log=work / f"rq-{tag}-worker{i}.log") for i in range(slots)]
        deadline = t0 + 900
        while queue.finished_job_registry.count + queue.failed_job_registry.count < n:
            if all(w.poll() is not None for w in workers) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        jobs = [j for j in Job.fetch_many(ids, connection=conn) if j is not None]
        finished = [j for j in jobs if j.get_status() == "finished" and j.started_at and j.ended_at]
        exit_by = time.monotonic() + RQ_EXIT_GRACE
        exits = [_reap_worker(reg, w, exit_by) for w in workers]
        if len(finished) != n:
            raise RuntimeError(f"rq finished {len(finished)} of {n} jobs; see {work}/rq-{tag}-worker*.log")
        first = min(j.started_at.timestamp() for j in finished if j.started_at)
        last = max(j.ended_at.timestamp() for j in finished if j.ended_at)
        lags = [lag for lag, _ in exits]
        return {"seconds": last - wall0, "startup_seconds": first - wall0, "work_seconds": last - first,
                "cpu": sum(cpu for _, cpu in exits),
                "exit_after_last_job_s": [None if lag is None else round(lag, 3) for lag in lags],
                "killed_in_teardown": sum(lag is None for lag in lags)}
    finally:
        conn.close()


def peer_account(log: Path) -> tuple[float, float]:
    """(work_started, work_seconds): the lines a bench.bare peer prints at its end."""
    found: dict[str, float] = {}
    for line in reversed(log.read_text().splitlines()):
        key, _, value = line.partition("=")
        if key in ("work_started", "work_seconds") and key not in found:
            found[key] = float(value)
    if len(found) != 2:
        raise RuntimeError(f"no work_started / work_seconds lines in {log}")
    return found["work_started"], found["work_seconds"]


def calibrate(reg: Registry, work: Path, n: int, slots: int, rq_port: int | None, say: Any) -> dict[str, Any]:
    """Each peer alone, briefly, from its own account of the run rather than
    from the harness's clock: its start-up (launch to its first job, or to
    its work loop) and its rate (jobs over the time from its first job's
    start to its last job's end; bench.bare's in-process timer). Nothing
    else of the benchmark runs meanwhile."""
    rates: dict[str, Any] = {}
    for name, key in (("pool", "pool"), ("fork", "bare")):
        say(f"throughput: calibrating {name} alone ({n} jobs)")
        log = work / f"calibrate-{name}.log"
        launched = time.monotonic()
        _timed(reg, [PYTHON, "-m", "bench.bare", name, str(n), str(slots)], log, 600)
        started, seconds = peer_account(log)
        rates[key] = {"n": n, "startup_seconds": started - launched, "work_seconds": seconds,
                      "jobs_per_s": n / seconds}
    if rq_port is not None:
        say(f"throughput: calibrating rq alone ({n} jobs)")
        once = rq_once(reg, work, rq_port, n, slots, "calibrate")
        rates["rq"] = {"n": n, "startup_seconds": once["startup_seconds"], "work_seconds": once["work_seconds"],
                       "jobs_per_s": n / once["work_seconds"]}
    return rates


def peer_checks(calibration: dict[str, Any], n: int, seconds: dict[str, float]) -> dict[str, Any]:
    """Each peer's figure in the run (`seconds` for `n` jobs, end to end)
    against what its calibration predicts: its start-up alone plus n jobs at
    its rate alone. `agreement` is predicted / measured (1.0: the run's figure
    is what the peer does by itself); `suspect` says why the figure cannot
    back a ratio, empty when it can. A stall that is not the peer's work (a
    teardown the harness waits for, a polling interval of the harness) is in
    the measured figure only, and shows as an agreement far below 1."""
    checks: dict[str, Any] = {}
    for peer, cal in calibration.items():
        if peer not in seconds:
            continue
        predicted = cal["startup_seconds"] + n / cal["jobs_per_s"]
        agreement = predicted / seconds[peer]
        suspect = ""
        if not 1 / SUSPECT_FACTOR <= agreement <= SUSPECT_FACTOR:
            suspect = (f"{n:,} jobs took {seconds[peer]:.2f} s in the run, its calibration alone predicts "
                       f"{predicted:.2f} s ({agreement:.2f}x; trusted within {1 / SUSPECT_FACTOR:.1f}x-"
                       f"{SUSPECT_FACTOR:.0f}x)")
        checks[peer] = {"predicted_seconds": predicted, "agreement": agreement, "suspect": suspect}
    return checks


def run(reg: Registry, work: Path, n: int, reps: int, with_rq: bool, say: Any) -> dict[str, Any]:
    slots = 2
    names = ["phoenix", "batch_cb", "batch", "pool", "bare"]
    rq_note = None
    server, rq_port = None, None
    if with_rq and shutil.which("redis-server"):
        server, rq_port = start_redis(reg, work)
        names.append("rq")
    elif with_rq:
        rq_note = "skipped: no redis-server binary on PATH (apt-get install redis-server)"
    else:
        rq_note = "skipped (--no-rq)"
    results: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    rq_runs: list[dict[str, Any]] = []
    loads: list[str] = []
    try:
        calibration = calibrate(reg, work, min(n, CALIBRATION_JOBS), slots, rq_port, say)
        for rep in range(reps):
            loads.append(loadavg())
            say(f"throughput rep {rep + 1}/{reps}: phoenix ({n} jobs) [load {loads[-1]}]")
            once = phoenix_once(reg, work, n, rep)
            results["phoenix"].append(once["seconds"])
            cpu["phoenix"].append(once["cpu"])
            for name, callback in (("batch_cb", True), ("batch", False)):
                say(f"throughput rep {rep + 1}/{reps}: phoenix batch ({n} jobs by a startup hook, "
                    f"{'an on_finished callback each' if callback else 'no callback'})")
                once = phoenix_batch_once(reg, work, n, rep, callback)
                results[name].append(once["seconds"])
                cpu[name].append(once["cpu"])
            for name in ("pool", "fork"):
                say(f"throughput rep {rep + 1}/{reps}: {name}")
                wall, used = _timed(reg, [PYTHON, "-m", "bench.bare", name, str(n), str(slots)],
                                    work / f"{name}.log", 600)
                results["pool" if name == "pool" else "bare"].append(wall)
                cpu["pool" if name == "pool" else "bare"].append(used)
            if rq_port is not None:
                say(f"throughput rep {rep + 1}/{reps}: rq worker --burst x{slots}")
                rq_runs.append(rq_once(reg, work, rq_port, n, slots, f"rep{rep}"))
                results["rq"].append(rq_runs[-1]["seconds"])
                cpu["rq"].append(rq_runs[-1]["cpu"])
    finally:
        if server is not None:
            reg.stop(server.pid)
    best = {k: min(v) for k, v in results.items()}
    middle = {k: statistics.median(v) for k, v in results.items()}
    jobs_per_s = {k: n / v for k, v in middle.items()}
    # Each repetition ran every contender back to back: their ratio within
    # one repetition saw the same load.
    per_rep = {k: [results[k][i] / results["phoenix"][i] for i in range(reps)] for k in names if k != "phoenix"}
    # The batch rows against the Pool, per repetition: its speed (Pool's time
    # over Phoenix's) and Phoenix's CPU per job over the Pool's.
    batch_per_rep = {k: {"speed": [results["pool"][i] / results[k][i] for i in range(reps)],
                         "cpu": [cpu[k][i] / cpu["pool"][i] for i in range(reps)]} for k in ("batch_cb", "batch")}
    return {"n": n, "slots": slots, "reps": reps, "all": results, "best": best, "median": middle,
            "batch_per_rep": batch_per_rep, "jobs_per_s": jobs_per_s, "ratio_per_rep": per_rep, "rq_note": rq_note,
            "cpu": cpu, "cpu_ms_per_job": {k: statistics.median(v) / n * 1000 for k, v in cpu.items()},
            "loads": loads, "calibration": calibration, "peer_checks": peer_checks(calibration, n, middle),
            "rq_runs": rq_runs}
