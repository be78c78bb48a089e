"""Hang detection: N children, K of which freeze (SIGSTOP to themselves, so
the heartbeat thread stops too) at random moments; the master must kill each
one `heartbeat_timeout` after its last beat. The master logs every kill as
`kill pid=... reason=heartbeat_timeout after=5.03s`, `after` being the time
since the last beat it received: after - timeout is the detection latency.

Cross-check independent of the master's own reading: the log line's
millisecond timestamp minus the wall-clock time at which the job's last beat
left it (recorded by the job, see bench.apps:hang), minus the timeout. It
also counts the time that beat spent queued in the socket.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from bench.master import beating_master
from bench.procs import Registry, loadavg, median, percentile

TIMEOUT = 5.0  # bench.apps:beat_app heartbeat_timeout


DGRAM_QLEN = Path("/proc/sys/net/unix/max_dgram_qlen")
TUNED_QLEN = 512  # what the README advises for hundreds of children


@contextmanager
def dgram_queue(length: int) -> Iterator[bool]:
    """net.unix.max_dgram_qlen raised to `length` for sockets created inside
    (the master's heartbeat socket takes it at bind), restored afterwards.
    Yields False, changing nothing, where this process may not write it."""
    try:
        before = DGRAM_QLEN.read_text().strip()
        DGRAM_QLEN.write_text(str(length))
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        DGRAM_QLEN.write_text(before)


def run(reg: Registry, work: Path, n: int, hung: int, say: Any, name: str = "hang") -> dict[str, Any]:
    state = work / name
    record = state / "stops"
    record.mkdir(parents=True, exist_ok=True)
    rng = random.Random(4)
    master = beating_master(reg, state, n - hung)
    say(f"hang detection: growing to {n - hung} beating children [load {loadavg()}]")
    master.grow_to(n - hung)
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
        "running_at_end": len(st["running"]), "load": loadavg(), "log": str(master.log_path),
    }
