"""`python -m bench.cpusplit [--jobs 2000] [--rounds 2] [--no-callback]`:
where a no-op job's CPU goes, process by process, as a user runs a batch
(`bench.apps:batch_app`, 2 slots, its startup hook submitting the jobs, an
`on_finished` callback on every job unless --no-callback).

Not a ratio against a peer: the throughput figure (`python -m bench --only
throughput`) is that. This splits Phoenix's side of it, which wait4's rusage
of a whole `--exit-when-done` run cannot: the master is kept running until
every job has ended and every callback is recorded done (read from the
journal), then the master's own CPU (/proc/PID/stat utime + stime), its fork
server's own, and the job children's (the fork server's cutime + cstime:
it reaps them) are read, divided by the jobs, and the master is stopped.
The run is checked: every job finished, every callback done.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench import apps
from bench.procs import CLK_TCK, PYTHON, Registry, children_of, env, loadavg


def _cpu(pid: int) -> tuple[float, float, float, float]:
    """utime, stime, cutime, cstime of pid, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(x) / CLK_TCK for x in fields[11:15])
    return utime, stime, cutime, cstime


def _ended(journal: Path, jobs: int, callbacks: bool) -> bool:
    if not journal.exists() or journal.stat().st_size == 0:
        return False  # not created yet: never create it from here (an empty file is a damaged journal)
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1.0) as db:
            finished = db.execute("SELECT count(*) FROM jobs WHERE state = 'finished'").fetchone()[0]
            undone = db.execute("SELECT count(*) FROM callbacks WHERE state != 'done'").fetchone()[0]
    except sqlite3.Error:
        return False
    return bool(finished == jobs and (undone == 0 or not callbacks))


def one_round(reg: Registry, work: Path, jobs: int, callbacks: bool) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(dir=work))
    run_env = {**env(), apps.BATCH_JOBS: str(jobs), apps.BATCH_STATE_DIR: str(state),
               apps.BATCH_CALLBACK: "1" if callbacks else "0"}
    master = reg.popen([PYTHON, "-m", "phoenix", "start", "bench.apps:batch_app", "--state-dir", str(state),
                        "--workers", "2", "--log-file", str(state / "master.log")], env=run_env)
    started = time.monotonic()
    try:
        while not _ended(state / "journal.db", jobs, callbacks):
            if master.poll() is not None:
                raise SystemExit(f"the master exited ({master.returncode}): see {state / 'master.log'}")
            if time.monotonic() - started > 600:
                raise SystemExit(f"{jobs} jobs did not end within 600 s: see {state / 'master.log'}")
            time.sleep(0.05)
        wall = time.monotonic() - started
        servers = [pid for pid in children_of(master.pid)
                   if b"fork server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        if len(servers) != 1:
            raise SystemExit(f"expected one fork server under the master, found {servers}")
        m, s = _cpu(master.pid), _cpu(servers[0])
    finally:
        reg.stop(master.pid)
    per_job = 1000 / jobs
    return {"wall s (run)": wall, "master": (m[0] + m[1]) * per_job, "master user": m[0] * per_job,
            "master system": m[1] * per_job, "fork server": (s[0] + s[1]) * per_job,
            "children": (s[2] + s[3]) * per_job, "children user": s[2] * per_job, "children system": s[3] * per_job}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpusplit")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-callback", action="store_true", help="the batch app without its on_finished")
    args = parser.parse_args()
    reg = Registry()
    rounds = []
    try:
        with tempfile.TemporaryDirectory(prefix="phoenix-cpusplit-") as work:
            for n in range(args.rounds):
                print(f"round {n + 1}/{args.rounds}: {args.jobs} jobs [load {loadavg()}]", flush=True)
                rounds.append(one_round(reg, Path(work), args.jobs, not args.no_callback))
    finally:
        reg.cleanup()
    print(f"CPU per job (ms), {args.rounds} rounds of {args.jobs} jobs, "
          f"{'no callback' if args.no_callback else 'on_finished on every job'}: min / median / max")
    for key in rounds[0]:
        values = sorted(r[key] for r in rounds)
        print(f"  {key:16} {values[0]:7.2f} / {statistics.median(values):7.2f} / {values[-1]:7.2f}")
    total = [r["master"] + r["fork server"] + r["children"] for r in rounds]
    print(f"  {'all three':16} {min(total):7.2f} / {statistics.median(total):7.2f} / {max(total):7.2f}")


if __name__ == "__main__":
    main()
