"""Process bookkeeping for the benchmarks: start processes, remember every
pid (with its start time, so a reused pid is never signalled), read CPU time
and memory from /proc, and stop everything by pid at the end."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from phoenix.linux import procfs

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def tool(name: str) -> str:
    """A console script of this interpreter's environment (phoenix, rq, gunicorn)."""
    candidate = BIN / name
    return str(candidate) if candidate.exists() else name


def env() -> dict[str, str]:
    """Environment for everything we start: the repo importable (bench.apps),
    no PHOENIX_* settings leaking in from the caller."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("PHOENIX_")}
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["PYTHONUNBUFFERED"] = "1"
    return e


# -- /proc ------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # [0] is field 3


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def alive(pid: int, started: int | None = None) -> bool:
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def cpu_ticks_seconds(pid: int) -> float | None:
    """utime + stime of the whole process from /proc/PID/stat (10 ms ticks)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else None


def cpu_ns(pid: int) -> int | None:
    """On-CPU nanoseconds of every thread of `pid` (schedstat: ns precision,
    unlike the 10 ms ticks of /proc/PID/stat)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


@dataclass
class CpuSample:
    wall: float
    ns: int
    ticks_s: float


def cpu_sample(pid: int) -> CpuSample:
    ns = cpu_ns(pid)
    ticks = cpu_ticks_seconds(pid)
    if ns is None or ticks is None:
        raise RuntimeError(f"process {pid} is gone")
    return CpuSample(time.monotonic(), ns, ticks)


def rss_kb(pid: int) -> int | None:
    rss = procfs.rss_bytes(pid)
    return None if rss is None else rss // 1024


def wakeups(pid: int) -> int | None:
    """Voluntary context switches of the main thread: each is one time it
    blocked (in epoll_wait, for an event loop), so a delta over a window
    counts the loop's wake-ups."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def smaps_rollup(pid: int) -> dict[str, int]:
    """kB figures of /proc/PID/smaps_rollup."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[0].endswith(":") and parts[2] == "kB":
                    out[parts[0][:-1]] = int(parts[1])
    except OSError:
        pass
    return out


def uss_kb(pid: int) -> int | None:
    """Unique set size: pages only this process maps (Private_Clean + Private_Dirty)."""
    r = smaps_rollup(pid)
    if not r:
        return None
    return r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    seen: list[int] = []
    stack = [pid]
    while stack:
        for c in children_of(stack.pop()):
            if c not in seen:
                seen.append(c)
                stack.append(c)
    return seen


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_available(seconds: float = 0.3) -> float:
    """Share of a core a freshly runnable process gets right now: spin for
    `seconds` and compare CPU time to wall time (1.0 on a machine with a core
    free; less when other work competes for both cores)."""
    t0, c0 = time.monotonic(), time.thread_time()
    while time.monotonic() - t0 < seconds:
        pass
    return (time.thread_time() - c0) / (time.monotonic() - t0)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# -- the registry of everything we start ---------------------------------------------


class Registry:
    """Every process a benchmark starts, so that each one is stopped by pid
    (TERM, then KILL) however the run ends. Never signals a pid whose start
    time no longer matches: that would be some other process."""

    def __init__(self) -> None:
        self.procs: dict[int, int | None] = {}  # pid -> start time
        self.popens: list[subprocess.Popen[Any]] = []

    def add(self, pid: int) -> None:
        if pid not in self.procs:
            self.procs[pid] = start_time(pid)

    def add_many(self, pids: Iterable[int]) -> None:
        for pid in pids:
            self.add(pid)

    def popen(self, argv: list[str], *, log: Path | None = None, **kw: Any) -> subprocess.Popen[Any]:
        if log is not None:
            out = open(log, "ab")
            kw.setdefault("stdout", out)
            kw.setdefault("stderr", subprocess.STDOUT)
        else:
            kw.setdefault("stdout", subprocess.DEVNULL)
            kw.setdefault("stderr", subprocess.DEVNULL)
        kw.setdefault("cwd", str(REPO))
        kw.setdefault("env", env())
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, **kw)
        if log is not None:
            out.close()
        self.popens.append(proc)
        self.add(proc.pid)
        return proc

    def stop(self, pid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Signal one registered pid and wait for it to be gone (reaping it if ours)."""
        started = self.procs.get(pid, start_time(pid))
        if not alive(pid, started):
            self._reap(pid)
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap(pid)
            if not alive(pid, started):
                self._reap(pid)  # it may have died between the two looks
                return
            time.sleep(0.02)
        if alive(pid, started):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for _ in range(250):
                self._reap(pid)
                if not alive(pid, started):
                    break
                time.sleep(0.02)

    def _reap(self, pid: int) -> None:
        for p in self.popens:
            if p.pid == pid:
                p.poll()
                return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    def cleanup(self) -> list[int]:
        """Stop whatever registered process is still alive; returns those pids."""
        left = [pid for pid, st in self.procs.items() if alive(pid, st)]
        for pid in left:
            try:
                os.kill(pid, signal.SIGCONT)  # a stopped process only acts on TERM once continued
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(alive(p, self.procs[p]) for p in left):
            for p in left:
                self._reap(p)
            time.sleep(0.05)
        for pid in left:
            if alive(pid, self.procs[pid]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.popens:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return left


# -- Phoenix helpers ------------------------------------------------------------------

_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) (\w+)\s+\[(\d+)\] (\S+)(.*)$")
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


@dataclass
class LogEvent:
    at: float  # wall clock (s since epoch)
    level: str
    pid: int
    name: str
    fields: dict[str, str]


def parse_log(path: Path) -> list[LogEvent]:
    """The master's text log (one event per line, millisecond timestamps)."""
    events = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return events
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
        fields = {}
        for k, v in _FIELD.findall(m.group(5)):
            fields[k] = json.loads(v) if v.startswith('"') else v
        events.append(LogEvent(stamp, m.group(2), int(m.group(3)), m.group(4), fields))
    return events


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def median(values: list[float]) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
