"""Spawn latency with a free slot: from the submission to the job's body
running in its child.

The job (bench.apps:probe) sends CLOCK_MONOTONIC (system-wide on Linux) to a
datagram socket of the benchmark as its first act; the latency is that time
minus the moment just before the submission started.

The in-process path is split in three, each the median over the samples:
the journal write (open, submit, close), the `wake` round trip on the
control socket, and from the wake's reply to the job running (the master's
loop, fork, the journal's begin_attempt, the child's set-up).

Two submission paths:
- in-process: exactly the steps of `phoenix submit` once its interpreter is
  up (open the journal, submit, close, `wake` on the control socket);
- the `phoenix submit` command itself: the same plus a Python interpreter
  starting and importing click and phoenix, which no master can shorten.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from bench.beats import memory_of
from bench.master import PhoenixMaster
from bench.procs import PYTHON, Registry, loadavg, median, percentile, tool
from phoenix.store.sqlite import Journal
from phoenix.wire import control


def _wait_reply(sock: socket.socket, i: int, timeout: float = 10.0) -> int:
    sock.settimeout(timeout)
    while True:
        data = sock.recv(256)
        stamp, _, index = data.partition(b" ")
        if int(index) == i:
            return int(stamp)


MEMORY_CHILDREN = 30


def _memory_beside_bare(reg: Registry, master: PhoenixMaster, work: Path, say: Any) -> dict[str, Any]:
    """Per-child USS of Phoenix children (sleeping jobs, beating) against
    bare children forked from a process that imported phoenix, beating from
    a thread the same way (bench.bare senders): what Phoenix adds per child."""
    n = MEMORY_CHILDREN
    say(f"spawn: per-child USS, {n} sleeping jobs beside {n} bare beating children [load {loadavg()}]")
    master.submit_many(("bench.apps:beat", {"s": 120}, f"uss-{i}") for i in range(n))
    master.set_workers(n)
    live = master.wait_running(n, timeout=120, poll=0.1)
    time.sleep(1.0)  # past their first beats
    phoenix = memory_of([r["pid"] for r in live["running"].values()])
    deadline = time.monotonic() + 60
    d = work / "uss"
    d.mkdir(exist_ok=True)
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(d / "sink.sock"))
    pidfile = d / "senders.pids"
    senders = reg.popen([PYTHON, "-m", "bench.bare", "senders", str(d / "sink.sock"), str(n), "0.2", str(pidfile)],
                        log=d / "senders.log")
    try:
        while not pidfile.exists():
            if time.monotonic() > deadline or senders.poll() is not None:
                raise RuntimeError(f"bare senders did not start; see {d / 'senders.log'}")
            time.sleep(0.05)
        bare_pids = [int(p) for p in pidfile.read_text().split()]
        reg.add_many(bare_pids)
        time.sleep(1.0)
        bare = memory_of(bare_pids)
    finally:
        reg.stop(senders.pid)
        sink.close()
    return {"n": n, "phoenix": phoenix, "bare": bare,
            "extra_kb_median": phoenix["uss_kb_median"] - bare["uss_kb_median"]}


def run(reg: Registry, work: Path, api_samples: int, cli_samples: int, say: Any) -> dict[str, Any]:
    state = work / "spawn"
    master = PhoenixMaster(reg, state, "bench.apps:beat_app", workers=4, use_config_file=True)
    master.start()  # returns once the master logs that it is ready
    reply_path = str(master.paths.root / "probe.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(reply_path)
    api_ms: list[float] = []
    cli_ms: list[float] = []
    parts: dict[str, list[float]] = {"journal_submit": [], "wake_roundtrip": [], "after_wake": []}
    woken: dict[str, tuple[float, int, int]] = {}
    try:
        say(f"spawn latency: {api_samples} in-process submissions [load {loadavg()}]")
        for i in range(api_samples + 5):
            params = json.dumps({"i": i, "reply": reply_path}, separators=(",", ":"))
            time.sleep(0.02)  # the previous probe has ended: a slot is free
            t0 = time.monotonic_ns()
            journal = Journal(master.paths.journal)
            try:
                journal.submit("bench.apps:probe", params, f"probe-{i}")
            finally:
                journal.close()
            t_submitted = time.monotonic_ns()
            try:
                control.request(master.paths.control_socket, {"cmd": "wake"}, timeout=2.0)
            except control.ControlError:
                pass
            t_woken = time.monotonic_ns()
            wall_woken = time.time()
            t1 = _wait_reply(sock, i)
            if i >= 5:  # the first few warm the master's import of the target
                api_ms.append((t1 - t0) / 1e6)
                parts["journal_submit"].append((t_submitted - t0) / 1e6)
                parts["wake_roundtrip"].append((t_woken - t_submitted) / 1e6)
                parts["after_wake"].append((t1 - t_woken) / 1e6)
                woken[f"probe-{i}"] = (wall_woken, t_woken, t1)
        say(f"spawn latency: {cli_samples} `phoenix submit` commands")
        for j in range(cli_samples):
            i = api_samples + 5 + j
            params = json.dumps({"i": i, "reply": reply_path}, separators=(",", ":"))
            time.sleep(0.02)
            t0 = time.monotonic_ns()
            proc = reg.popen([tool("phoenix"), "submit", "bench.apps:probe", params, "--key", f"probe-{i}",
                              "--state-dir", str(master.paths.root)])
            t1 = _wait_reply(sock, i)
            proc.wait(timeout=30)
            cli_ms.append((t1 - t0) / 1e6)
        memory = _memory_beside_bare(reg, master, work, say)
    finally:
        sock.close()
        say("spawn latency: stopping the phoenix master")
        master.stop()
    # Split "after wake" at the master's `spawn` log line (written once the
    # child is taken (the spare) or forked, its pid recorded and its order sent; ms resolution).
    master_ms, child_ms = [], []
    for e in master.events("spawn"):
        key = e.fields.get("job", "")
        if key in woken:
            wall_woken, t_woken, t1 = woken[key]
            spawn_mono = t_woken + (e.at - wall_woken) * 1e9
            master_ms.append((spawn_mono - t_woken) / 1e6)
            child_ms.append((t1 - spawn_mono) / 1e6)
    return {
        "memory": memory,
        "after_wake_split_p50_ms": {"master (wake -> spawn logged)": median(master_ms),
                                    "child (spawn logged -> job body)": median(child_ms)},
        "api_p50_ms": median(api_ms), "api_p99_ms": percentile(api_ms, 99), "api_max_ms": max(api_ms),
        "api_samples": len(api_ms), "api_parts_p50_ms": {k: median(v) for k, v in parts.items()},
        "api_parts_p99_ms": {k: percentile(v, 99) for k, v in parts.items()},
        "cli_p50_ms": median(cli_ms), "cli_p99_ms": percentile(cli_ms, 99), "cli_samples": len(cli_ms),
        "load": loadavg(), "log": str(master.log_path),
    }
