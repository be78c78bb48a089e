"""Heartbeat cost, its scaling, and memory.

Phoenix: one master (bench.apps:beat_app: 5 Hz beats, 5 s timeout) whose
slots grow 100 -> 500 -> 1,000 -> 2,000 through a config file and SIGHUP;
children run `bench.apps:beat`, which only sleeps while its heartbeat thread
beats. At each size, after the children settle, the master's CPU time is
read from /proc (schedstat, ns; /proc/PID/stat ticks as a cross-check) over
a window, and divided by the beats it counted in that window (master.beats
of the live status, the figure `phoenix status --json` shows).

Peer: a bare Python recvmsg loop with SO_PASSCRED (bench/bare.py receive),
fed by the same number of forked children sending the same datagrams at the
same rate (bench/bare.py senders), measured the same way. Phoenix and the
peer never run at the same time.

Memory, at the heartbeat figure's size: the master's RSS (VmRSS), and each
child's USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup); the
bare senders' USS, forked from a process that imported phoenix, is the floor
for a Python child that beats from a thread.
"""

from __future__ import annotations

import mmap
import signal
import struct
import time
from pathlib import Path
from typing import Any, Callable

from bench.master import beating_master
from bench.procs import PYTHON, Registry, cpu_sample, loadavg, median, percentile, rss_kb, smaps_rollup, wakeups

INTERVAL = 0.2


def _window(pid: int, beats: Callable[[], int], window: float) -> dict[str, Any]:
    b0 = beats()
    tb0 = time.monotonic()
    w0 = wakeups(pid) or 0
    c0 = cpu_sample(pid)
    time.sleep(window)
    c1 = cpu_sample(pid)
    w1 = wakeups(pid) or 0
    b1 = beats()
    tb1 = time.monotonic()
    rate = (b1 - b0) / (tb1 - tb0)
    cpu = (c1.ns - c0.ns) / 1e9 / (c1.wall - c0.wall)
    cpu_ticks = (c1.ticks_s - c0.ticks_s) / (c1.wall - c0.wall)
    return {
        "beats": b1 - b0,
        "beats_per_s": rate,
        "cpu_frac": cpu,  # of one core
        "cpu_frac_ticks": cpu_ticks,
        "us_per_beat": cpu / rate * 1e6 if rate else float("nan"),
        "us_per_beat_ticks": cpu_ticks / rate * 1e6 if rate else float("nan"),
        "window": c1.wall - c0.wall,
        "beats_per_wakeup": rate * (c1.wall - c0.wall) / (w1 - w0) if w1 > w0 else float("nan"),
        "load": loadavg(),
    }


def memory_of(pids: list[int]) -> dict[str, Any]:
    uss, pss, rss = [], [], []
    for pid in pids:
        r = smaps_rollup(pid)
        if r:
            uss.append(r.get("Private_Clean", 0) + r.get("Private_Dirty", 0))
            pss.append(r.get("Pss", 0))
            rss.append(r.get("Rss", 0))
    return {
        "count": len(uss),
        "uss_kb_median": median(uss),
        "uss_kb_p90": percentile(uss, 90),
        "uss_kb_max": max(uss) if uss else float("nan"),
        "pss_kb_median": median(pss),
        "rss_kb_median": median(rss),
    }


def run_phoenix(reg: Registry, work: Path, points: list[int], window: float, settle: float, mem_at: int,
                say: Any) -> dict[str, Any]:
    state = work / "beats"
    top = max(points)
    master = beating_master(reg, state, top)
    time.sleep(0.5)
    out: dict[str, Any] = {"points": [], "rss_kb_empty": rss_kb(master.pid)}
    try:
        for n in points:
            say(f"heartbeats: phoenix, growing to {n} children [load {loadavg()}]")
            try:
                took = master.grow_to(n, timeout=90.0)
            except RuntimeError as exc:
                # Could not get there (children killed and re-run faster than they are added):
                # record why, and measure nothing larger.
                kills = len(master.events("kill"))
                out["failed"] = {"n": n, "error": str(exc).split(";")[0], "kills": kills, "load": loadavg()}
                say(f"heartbeats: phoenix could not reach {n} children ({kills} kills so far); stopping the ramp")
                break
            time.sleep(settle)
            say(f"heartbeats: phoenix, measuring {n} children for {window:.0f} s")
            t_window = time.time()
            point = _window(master.pid, lambda: int(master.live()["master"]["beats"]), window)
            st = master.live()
            point.update(n=n, running=len(st["running"]), rejected=st["master"].get("rejected", {}), grow_s=took,
                         kills_in_window=len(master.events("kill", since=t_window)),
                         kills_so_far=len(master.events("kill")))
            out["points"].append(point)
            if n <= mem_at:  # the largest size measured up to mem_at
                pids = [int(r["pid"]) for r in st["running"].values()]
                out["memory"] = {"n": n, "master_rss_kb": rss_kb(master.pid), **memory_of(pids)}
        out["kills"] = len(master.events("kill"))
        out["log"] = str(master.log_path)
    finally:
        say("heartbeats: stopping the phoenix master and its children")
        master.stop()
    return out


def run_bare(reg: Registry, work: Path, points: list[int], window: float, settle: float, mem_at: int,
             say: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"points": []}
    for n in points:
        d = work / f"bare{n}"
        d.mkdir(parents=True, exist_ok=True)
        sock, count_path, pidfile = d / "r.sock", d / "count", d / "senders.pids"
        count_path.write_bytes(b"\0" * 8)
        receiver = reg.popen([PYTHON, "-m", "bench.bare", "receive", str(sock), str(count_path)],
                             log=d / "receiver.log")
        senders = None
        try:
            deadline = time.monotonic() + 10
            while not sock.exists():
                if time.monotonic() > deadline or receiver.poll() is not None:
                    raise RuntimeError(f"bare receiver did not start; see {d / 'receiver.log'}")
                time.sleep(0.01)
            say(f"heartbeats: bare recvmsg loop, {n} senders [load {loadavg()}]")
            senders = reg.popen([PYTHON, "-m", "bench.bare", "senders", str(sock), str(n), str(INTERVAL), str(pidfile)],
                                log=d / "senders.log")
            deadline = time.monotonic() + 120
            while not pidfile.exists():
                if time.monotonic() > deadline or senders.poll() is not None:
                    raise RuntimeError(f"bare senders did not start; see {d / 'senders.log'}")
                time.sleep(0.05)
            pids = [int(x) for x in pidfile.read_text().split()]
            reg.add_many(pids)
            time.sleep(settle)
            with open(count_path, "rb") as f:
                shared = mmap.mmap(f.fileno(), 8, prot=mmap.PROT_READ)
            point = _window(receiver.pid, lambda shared=shared: struct.unpack_from("q", shared, 0)[0], window)
            point["n"] = n
            out["points"].append(point)
            if n <= mem_at:
                out["memory"] = {"n": n, "receiver_rss_kb": rss_kb(receiver.pid), **memory_of(pids)}
        finally:
            if senders is not None:
                reg.stop(senders.pid, timeout=30)
            reg.stop(receiver.pid)
            if senders is not None and pidfile.exists():
                for pid in (int(x) for x in pidfile.read_text().split()):
                    reg.stop(pid, timeout=1.0, sig=signal.SIGKILL)
    return out
