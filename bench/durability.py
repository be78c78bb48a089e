"""The cost of durability: the code before it (a git revision, 271b616 by
default, unpacked with `git archive`) and this tree, side by side in one run,
rounds interleaved (old, new, new, old, ...) so that load on a shared
machine falls on both alike.

    python -m bench.durability                # 5 rounds; about 2 minutes
    python -m bench.durability --rounds 3 --jobs 200 --submits 500
    python -m bench.durability --old 271b616 --write   # also update RESULTS.md

Two figures per side, each round in a fresh state directory on the file
system of --dir (default: the system's temporary directory; it must be a
real disk, not tmpfs, where fsync costs nothing):

    submits   `Journal.submit` (what `phoenix submit` and `Client.submit`
              do, without an interpreter start per job) N times in one
              process, while a second connection holds the journal open as a
              running master does: submits per second and CPU per submit
    jobs      `phoenix start bench.apps:noop_app --workers 2 --exit-when-done`
              over N no-op jobs already in the journal: wall time, and CPU per
              job of the master and every process it reaped (wait4's rusage)

Each side's processes import that side's code (PYTHONPATH and cwd at its
root; checked: each submit run prints the phoenix it imported), and each run
is checked: every job finished, on its first attempt. Every process is
stopped by pid (bench.procs.Registry)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from bench.procs import PYTHON, REPO, Registry, loadavg
from bench.throughput import wait_with_cpu

DEFAULT_OLD = "271b616"
MARKER = "<!-- bench.durability: written by `python -m bench.durability --write` -->"

# Run in a side's interpreter: N submits while another connection holds the journal open.
_SUBMITS = """
import json, sys, time
import phoenix
from phoenix.store.sqlite import Journal
path, n = sys.argv[1], int(sys.argv[2])
holder = Journal(path)  # a running master's connection: no checkpoint on the submitter's close
journal = Journal(path)
cpu, wall = time.process_time(), time.monotonic()
for i in range(n):
    journal.submit("bench.apps:noop", json.dumps(i), f"s-{i}")
wall, cpu = time.monotonic() - wall, time.process_time() - cpu
count = journal.counts()["pending"]
journal.close(); holder.close()
print(json.dumps({"phoenix": phoenix.__file__, "wall": wall, "cpu": cpu, "pending": count}))
"""

_SEED = """
import json, sys
from phoenix.store.sqlite import Journal
journal = Journal(sys.argv[1])
journal.submit_many(("bench.apps:noop", json.dumps(i), f"noop-{i}") for i in range(int(sys.argv[2])))
journal.close()
"""


def unpack(rev: str, into: Path) -> Path:
    """The tree of `rev` (its phoenix, bench and tests packages) under `into`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def side_env(root: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
    e["PYTHONPATH"] = str(root)
    e["PYTHONUNBUFFERED"] = "1"
    return e


def submits_once(reg: Registry, root: Path, state: Path, n: int) -> dict[str, float]:
    state.mkdir(mode=0o700)
    proc = reg.popen([PYTHON, "-c", _SUBMITS, str(state / "journal.db"), str(n)], cwd=str(root),
                     env=side_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"submits under {root} failed: {err.strip()[-500:]}")
    got = json.loads(out)
    if not Path(got["phoenix"]).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the side at {root} imported {got['phoenix']}: not its own code")
    if got["pending"] != n:
        raise RuntimeError(f"{n} submits left {got['pending']} pending jobs")
    return {"per_second": n / got["wall"], "cpu_us": got["cpu"] / n * 1e6}


def jobs_once(reg: Registry, root: Path, state: Path, n: int) -> dict[str, float]:
    state.mkdir(mode=0o700)
    subprocess.run([PYTHON, "-c", _SEED, str(state / "journal.db"), str(n)], cwd=root, env=side_env(root),
                   check=True)
    log = state.parent / f"{state.name}.log"
    argv = [PYTHON, "-m", "phoenix", "start", "bench.apps:noop_app", "--workers", "2", "--exit-when-done",
            "--state-dir", str(state)]
    t0 = time.monotonic()
    proc = reg.popen(argv, log=log, cwd=str(root), env=side_env(root))
    code, cpu = wait_with_cpu(proc, timeout=600)
    wall = time.monotonic() - t0
    if code != 0:
        raise RuntimeError(f"the master under {root} exited {code}; see {log}")
    import sqlite3

    db = sqlite3.connect(state / "journal.db")
    try:
        ran = db.execute("SELECT count(*) FROM jobs WHERE state = 'finished' AND attempts = 1").fetchone()[0]
    finally:
        db.close()
    if ran != n:
        raise RuntimeError(f"{ran} of {n} jobs finished on their first attempt under {root}; see {log}")
    return {"per_second": n / wall, "cpu_ms": cpu / n * 1e3}


def spread(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.durability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default=DEFAULT_OLD, help="git revision of the code before (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=None, help="where the state directories go (a real disk)")
    parser.add_argument("--write", action="store_true", help="put the table in bench/RESULTS.md")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="phoenix-durability-", dir=args.dir))
    fs = subprocess.run(["findmnt", "-no", "FSTYPE,SOURCE", "-T", str(work)], capture_output=True, text=True)
    where = " ".join(fs.stdout.split()) or "?"
    if where.startswith("tmpfs"):
        print(f"warning: {work} is on tmpfs, where fsync costs nothing: pass --dir on a disk", file=sys.stderr)
    sides = {"old": unpack(args.old, work / "old"), "new": REPO}
    results: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
    reg = Registry()
    load_start = loadavg()
    try:
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for side in order:
                for name, figures in (
                        ("submits", submits_once(reg, sides[side], work / f"s-{side}-{r}", args.submits)),
                        ("jobs", jobs_once(reg, sides[side], work / f"j-{side}-{r}", args.jobs))):
                    for key, value in figures.items():
                        results[side].setdefault(f"{name}_{key}", []).append(value)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        left = reg.cleanup()
        if left:
            print(f"stopped processes left running: {left}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)

    rows = [("submits per second", "submits_per_second"), ("CPU per submit (us)", "submits_cpu_us"),
            ("jobs per second (2 slots, no-op)", "jobs_per_second"),
            ("CPU per job (ms, master + fork server + children)", "jobs_cpu_ms")]
    lines = [MARKER, "", "## Durability: the cost of acknowledging only what is on disk", "",
             f"`python -m bench.durability --old {args.old} --rounds {args.rounds} --jobs {args.jobs} "
             f"--submits {args.submits}`, run {time.strftime('%Y-%m-%d %H:%M %Z')}; state directories on "
             f"{where}; load average at start {load_start}, at end {loadavg()}. "
             f"Old: {args.old} (synchronous=NORMAL for every commit); new: this tree (synchronous=FULL for "
             "commits that are acknowledged). min / median / max of the rounds; ratio of the medians, new / old.",
             "", "| figure | old | new | new / old |", "| --- | --- | --- | --- |"]
    for label, key in rows:
        old, new = results["old"][key], results["new"][key]
        lines.append(f"| {label} | {spread(old)} | {spread(new)} | "
                     f"{statistics.median(new) / statistics.median(old):.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        path = Path(__file__).resolve().parent / "RESULTS.md"
        text = path.read_text() if path.exists() else ""
        kept = text.split(MARKER)[0].rstrip()
        path.write_text(kept + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
