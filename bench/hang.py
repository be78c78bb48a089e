"""Hang detection: N children, K of which freeze (SIGSTOP to themselves, so
the heartbeat thread stops too) at random moments; the master must kill each
one `heartbeat_timeout` after its last beat. The master logs every kill as
`kill pid=... reason=heartbeat_timeout after=5.03s`, `after` being the time
since the last beat it received: after - timeout is the detection latency.

Cross-check independent of the master's own reading: the log line's
millisecond timestamp minus the wall-clock time at which the job's last beat
left it (recorded by the job, see bench.apps:hang), minus the timeout. It
also counts the time that beat spent queued in the socket.

Run beside `hogs` busy-looping processes (2 by default: every core of the
reference machine taken), at the kernel's own net.unix.max_dgram_qlen (never
changed here: with a connection per child it no longer matters).

`frozen_master`: the master itself SIGSTOPped for 6 s with N children
beating; when it resumes, no healthy child may be killed for the silence.
"""

from __future__ import annotations

import os
import random
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from bench.master import beating_master
from bench.procs import PYTHON, Registry, loadavg, median, percentile

TIMEOUT = 5.0  # bench.apps:beat_app heartbeat_timeout


DGRAM_QLEN = Path("/proc/sys/net/unix/max_dgram_qlen")


@contextmanager
def cpu_hogs(reg: Registry, work: Path, count: int) -> Iterator[None]:
    """`count` processes spinning on a core each, stopped by pid afterwards."""
    hogs = [reg.popen([PYTHON, "-c", "while True: pass"], log=work / f"hog{i}.log") for i in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            reg.stop(hog.pid, timeout=5)


def run(reg: Registry, work: Path, n: int, hung: int, say: Any, name: str = "hang", hogs: int = 2) -> dict[str, Any]:
    state = work / name
    record = state / "stops"
    record.mkdir(parents=True, exist_ok=True)
    rng = random.Random(4)
    master = beating_master(reg, state, n - hung)
    say(f"hang detection: growing to {n - hung} beating children [load {loadavg()}]")
    master.grow_to(n - hung)
    say(f"hang detection: {hogs} CPU hogs beside it")
    with cpu_hogs(reg, state, hogs):
        load = loadavg()
        kills, st = _freeze_some(master, n, hung, rng, record, say)
    return _judge(kills, st, record, n, hung, hogs, load, master.log_path)


def _freeze_some(master: Any, n: int, hung: int, rng: random.Random, record: Path, say: Any) -> tuple[list[Any], Any]:
    try:
        # The hanging jobs start last, all together, then freeze over 3 s.
        master.submit_many(("bench.apps:hang", {"after": round(rng.uniform(1.0, 4.0), 3), "record": str(record)},
                            f"hang-{i}") for i in range(hung))
        t_submit = time.time()
        say(f"hang detection: {hung} more children that freeze within 1-4 s; timeout {TIMEOUT:.0f} s")
        master.set_workers(n)
        master.wait_running(n, timeout=120, poll=0.2)
        deadline = time.monotonic() + 4.0 + TIMEOUT + 20
        while time.monotonic() < deadline:
            if len(master.events("kill", since=t_submit)) >= hung:
                break
            time.sleep(0.25)
        time.sleep(0.5)
        kills = master.events("kill", since=t_submit)
        st = master.live()
    finally:
        say("hang detection: stopping the phoenix master and its children")
        master.stop()
    return kills, st


def _judge(kills: list[Any], st: Any, record: Path, n: int, hung: int, hogs: int, load: str,
           log: Path) -> dict[str, Any]:
    stops = {}
    for f in record.glob("*.stop"):
        stops[int(f.stem)] = float(f.read_text())
    excess_ms, cross_ms, false_kills = [], [], 0
    for k in kills:
        after = float(k.fields.get("after", "nan").rstrip("s"))
        pid = int(k.fields["pid"])
        if not k.fields.get("job", "").startswith("hang-"):
            false_kills += 1
            continue
        excess_ms.append((after - TIMEOUT) * 1000)
        if pid in stops:
            cross_ms.append((k.at - stops[pid] - TIMEOUT) * 1000)
    return {
        "n": n, "hung": hung, "timeout": TIMEOUT, "dgram_qlen": int(DGRAM_QLEN.read_text()),
        "killed": len(excess_ms), "false_kills": false_kills,
        "excess_ms_p50": median(excess_ms), "excess_ms_p99": percentile(excess_ms, 99),
        "excess_ms_max": max(excess_ms) if excess_ms else float("nan"),
        "cross_ms_p50": median(cross_ms), "cross_ms_p99": percentile(cross_ms, 99),
        "running_at_end": len(st["running"]), "hogs": hogs, "load": load, "log": str(log),
    }


def frozen_master(reg: Registry, work: Path, n: int, say: Any, frozen: float = 6.0) -> dict[str, Any]:
    """SIGSTOP the master for `frozen` seconds with n children beating; count the kills after."""
    state = work / "frozen"
    master = beating_master(reg, state, n)
    say(f"frozen master: growing to {n} beating children [load {loadavg()}]")
    try:
        master.grow_to(n)
        t0 = time.time()
        say(f"frozen master: SIGSTOP for {frozen:.0f} s")
        os.kill(master.pid, signal.SIGSTOP)
        time.sleep(frozen)
        os.kill(master.pid, signal.SIGCONT)
        time.sleep(TIMEOUT + 2.0)  # every child's deadline, counted from the resume, has passed
        kills = master.events("kill", since=t0)
        away = master.events("master_was_away", since=t0)
        running = len(master.live()["running"])
    finally:
        master.stop()
    return {"n": n, "frozen_s": frozen, "kills": len(kills), "running_after": running,
            "master_was_away": len(away), "load": loadavg()}
