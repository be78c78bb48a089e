"""The jobs of the job-speed figure (bench/jobspeed.py), and their app.

The same function runs under Phoenix (as a job of `speed_app`) and in a bare
forked child; it times itself from inside, so the figure is what the job's
own code sees while it runs. Lean on purpose, like bench/apps.py: the
master and the bare children import it.

    python -m bench.speed_jobs PARAMS_JSON    the bare contender: this module
                                              imported, then one os.fork()ed
                                              child runs work(PARAMS)

The bare child is forked from a fresh interpreter that imported only this
module, as a Phoenix child is forked from a fork server that imported only
the app: not from the benchmark's own process, whose larger heap (copied on
write, scanned by the collector) would slow the bare side.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import phoenix

# 5 Hz beats (the heartbeat_interval=0.2); a stall timeout, so that
# the job's progress calls are what the master watches, as they would be.
speed_app = phoenix.App("bench-speed", workers=1, heartbeat_interval=0.2, heartbeat_timeout=5.0)


def _spin_unit() -> int:
    """About 20 us of pure-Python integer arithmetic, allocating nothing."""
    x = 0
    for j in range(200):
        x = (x * 31 + j) & 0xFFFFFFFF
    return x


def _churn_unit() -> int:
    """About 40 us of allocation: small dicts, lists and strings built and
    dropped (the allocator and the cyclic collector at work: the dicts are
    tracked objects), a reference cycle for the collector to find, and every
    8th unit a 256 KiB buffer (above glibc's mmap threshold: an mmap, page
    faults and an munmap each time)."""
    items = [{"id": j, "name": str(j), "tags": [j, j + 1]} for j in range(40)]
    cycle: list[Any] = [items]
    cycle.append(cycle)
    return len(items)


UNITS = {"spin": _spin_unit, "churn": _churn_unit}


def _runqueue_wait() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU
    (/proc/thread-self/schedstat, second field): the machine's load, not
    anything the job or Phoenix did."""
    with open("/proc/thread-self/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def work(params: dict[str, Any]) -> dict[str, Any]:
    """Run `units` of `kind`, calling phoenix.heartbeat() `beat_hz` times a
    second (0: never) as a job reporting progress would; returns (and
    writes to `out`, if given) its own wall time, the part of it this
    thread spent waiting for a CPU (and the wall time without it), its
    process CPU time (all threads: a heartbeat thread's too) and the
    progress calls it made."""
    unit = UNITS[params["kind"]]
    units = int(params["units"])
    period = 1.0 / params["beat_hz"] if params.get("beat_hz") else 0.0
    big = params["kind"] == "churn"
    heartbeat = phoenix.heartbeat
    monotonic = time.monotonic
    beats = 0
    cpu0 = time.process_time()
    waited0 = _runqueue_wait()
    t0 = monotonic()
    next_beat = t0 + period
    for i in range(units):
        unit()
        if big and i % 8 == 0:
            buffer = bytearray(256 * 1024)
            buffer[::4096] = b"x" * len(buffer[::4096])  # touch every page
            del buffer
        if period:
            now = monotonic()
            if now >= next_beat:
                heartbeat()
                beats += 1
                # Keep the rate: the next call one period on, not a burst to catch up after a delay.
                next_beat = max(next_beat + period, now)
    seconds = monotonic() - t0
    waited = _runqueue_wait() - waited0
    result = {"seconds": seconds, "cpu": time.process_time() - cpu0, "runqueue_wait": waited,
              "unqueued_seconds": seconds - waited, "beats": beats, "pid": os.getpid(),
              "under_phoenix": phoenix.current_job() is not None, "threads": threading.active_count()}
    if params.get("out"):
        tmp = params["out"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.rename(tmp, params["out"])
    return result


@speed_app.job(stall_timeout=30.0, retries=0)
def measured(params: dict[str, Any]) -> None:
    """The figure's job under Phoenix: `work` in a Phoenix child."""
    work(params)


def bare(params: dict[str, Any]) -> int:
    """Fork one child that runs `work(params)`; its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work(params)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    import sys

    sys.exit(bare(json.loads(sys.argv[1])))
