"""`python -m bench --profile [--quick]`: where the master's time goes, for
the figures that miss their targets. Writes bench/PROFILE.md.

Needs py-spy (`pip install py-spy`; it attaches with ptrace, so root or
kernel.yama.ptrace_scope=0). Profiling is a separate run from the
measurement: a sampler shares the two cores and would skew the ratios.

Sections:
- throughput: py-spy over a whole `--exit-when-done` run (wall clock, idle
  included, main thread), the master's and its children's CPU split, and
  what a fork costs as the forking process grows (the master's imports);
- heartbeats: py-spy over a window of the master with N beating children;
- spawn: the child's set-up steps timed one by one in a forked child;
- replacement: what the new image imports (python -X importtime);
- memory: a Phoenix child's private pages by mapping, against a bare child.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.master import PhoenixMaster, beating_master
from bench.procs import PYTHON, REPO, Registry, cpu_sample, descendants, env, loadavg, rss_kb

TOP = 22


def _py_spy() -> str:
    path = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(path).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return path


def summarize(raw: Path, thread: str | None = "MainThread", top: int = TOP) -> str:
    """Markdown: inclusive time by function, and self time by line."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            if thread and thread not in frames[0]:
                continue
            frames = frames[1:]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if not frames:
            continue
        total += n
        own[_short(frames[-1])] += n
        for f in {re.sub(r":\d+\)$", ")", _short(f)) for f in frames}:
            if not f.startswith(_WRAPPERS):
                inclusive[f] += n
    if not total:
        return "_no samples_\n"
    lines = [f"{total} samples.", "", "| inclusive | function |", "| --- | --- |"]
    for f, n in inclusive.most_common(top):
        lines.append(f"| {n / total:.1%} | `{f}` |")
    lines += ["", "| self | line |", "| --- | --- |"]
    for f, n in own.most_common(15):
        lines.append(f"| {n / total:.1%} | `{f}` |")
    return "\n".join(lines) + "\n"


# Frames every sample passes through on its way to the loop: left out of the table.
_WRAPPERS = ("<module> (phoenix)", "Command.", "Context.invoke", "Group.invoke", "friendly_errors",
             "start (phoenix/cli", "run_master (", "<module> (bench")


def _short(frame: str) -> str:
    frame = re.sub(r"\(/[^()]*/site-packages/", "(", frame)
    frame = re.sub(r"\(/[^()]*/lib/python3\.\d+/", "(", frame)
    return frame.replace(str(REPO) + "/", "")


def profile_throughput(reg: Registry, work: Path, n: int) -> str:
    state = work / "tp"
    master = PhoenixMaster(reg, state, "bench.apps:noop_app", workers=2, extra_flags=["--exit-when-done"])
    master.submit_many(("bench.apps:noop", i, f"noop-{i}") for i in range(n))
    raw = work / "tp.raw"
    argv = [_py_spy(), "record", "--nonblocking", "--idle", "--threads", "-r", "200", "-f", "raw", "-o", str(raw),
            "--"] + master.command
    t0 = time.monotonic()
    spy = reg.popen(argv, log=work / "py-spy-tp.log")
    # The master's own CPU vs its children's (utime+stime and cutime+cstime of /proc/PID/stat).
    master_pid = server_pid = None
    last: tuple[int, ...] | None = None
    server_last: tuple[int, ...] | None = None

    def stat(pid: int) -> tuple[int, ...] | None:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]), int(f[12]), int(f[13]), int(f[14]), int(f[7]), int(f[8]))
        except (OSError, IndexError):
            return None

    while spy.poll() is None:
        if master_pid is None:
            kids = descendants(spy.pid)
            master_pid = kids[0] if kids else None
            if master_pid:
                reg.add(master_pid)
        if master_pid and server_pid is None:
            for pid in descendants(master_pid):
                try:
                    if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"phoenix: fork server"):
                        server_pid = pid
                except OSError:
                    pass
        if master_pid:
            last = stat(master_pid) or last
        if server_pid:
            server_last = stat(server_pid) or server_last
        time.sleep(0.05)
    wall = time.monotonic() - t0
    tck = os.sysconf("SC_CLK_TCK")
    split = ""
    if last and server_last:
        # The job children are the fork server's: its own CPU and theirs.
        u, s = last[0] / tck, last[1] / tck
        faults = last[4] / n
        cu, cs = ((server_last[i] + server_last[i + 2]) / tck for i in (0, 1))
        child_faults = (server_last[4] + server_last[5]) / n
        split = (f"Under the sampler: {n} jobs in {wall:.1f} s. CPU, read just before the master exited: master "
                 f"user {u:.2f} s + system {s:.2f} s = {(u + s) / n * 1000:.2f} ms per job, {faults:.0f} page faults "
                 f"per job; the fork server and its children user {cu:.2f} s + system {cs:.2f} s = "
                 f"{(cu + cs) / n * 1000:.2f} ms per job ({server_last[0] / tck + server_last[1] / tck:.2f} s of "
                 f"it the server's own), {child_faults:.0f} page faults per job. The master's pages are never "
                 "shared with a job child: its loop no longer faults after every spawn.\n\n")
    elif last:
        u, s, cu, cs = (x / tck for x in last[:4])
        faults, child_faults = last[4] / n, last[5] / n
        split = (f"Under the sampler: {n} jobs in {wall:.1f} s. CPU, read just before the master exited: master "
                 f"user {u:.2f} s + system {s:.2f} s = {(u + s) / n * 1000:.2f} ms per job; its children "
                 f"user {cu:.2f} s + system {cs:.2f} s = {(cu + cs) / n * 1000:.2f} ms per job. Two cores: the "
                 f"master's serial CPU per job bounds the rate at {n / (u + s):.0f} jobs/s.\n\n"
                 f"Page faults per job (minflt of /proc/PID/stat): the master {faults:.0f}, each child "
                 f"{child_faults:.0f}. After every fork all of the master's private pages are shared "
                 f"copy-on-write, so the first write to each page the master's loop touches faults again; "
                 f"most of the master's system time is these faults, not the fork itself.\n\n")
    return ("## Throughput: the master over a whole run (wall clock, idle included)\n\n" + split
            + summarize(raw, "MainThread"))


_FORK_PROBE = r"""
import os, sys, time
def rss():
    for l in open('/proc/self/status'):
        if l.startswith('VmRSS'): return int(l.split()[1]) / 1024
def loop(n=300):
    t = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return (time.perf_counter() - t) / n * 1000
def child_start(n=100):
    # What a child has paid by its first line of Python: CPU and page faults
    # (the interpreter's after-fork work touches, and so copies, the parent's pages).
    import resource
    cpu = faults = 0.0
    for _ in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            os.write(w, f"{ru.ru_utime + ru.ru_stime} {ru.ru_minflt}".encode())
            os._exit(0)
        os.close(w)
        c, f = os.read(r, 100).split()
        os.close(r)
        os.waitpid(pid, 0)
        cpu += float(c)
        faults += int(f)
    return cpu / n * 1000, faults / n
what = sys.argv[1]
if what != "bare":
    exec(what)
import gc; gc.freeze()
best = min(loop() for _ in range(3))
cpu, faults = child_start()
print(f"{rss():.1f} {best:.3f} {cpu:.3f} {faults:.0f}")
"""


def profile_fork_cost() -> str:
    cases = [
        ("bare interpreter", "bare"),
        ("+ threading (its at-fork hook)", "import threading"),
        ("+ random (reseeds at fork)", "import random"),
        ("+ logging (its hook, and threading's)", "import logging"),
        ("+ the setproctitle package (imports logging)", "import setproctitle"),
        ("the fork server: phoenix.child.forkserver and the app", "import phoenix.child.forkserver\n"
         "from phoenix.app import load_app\nload_app('bench.apps:noop_app')"),
        ("+ sqlite3, json, logging, selectors", "import sqlite3, json, logging, selectors, socket, threading"),
        ("+ phoenix.master.arbiter (what the master imports)", "import phoenix.master.arbiter"),
        ("+ phoenix.cli.main (what `phoenix start` imports)", "import phoenix.cli.main, phoenix.master.arbiter"),
    ]
    lines = ["## What a fork costs as the forking process grows", "",
             "Sequential fork + child `os._exit(0)` + waitpid, best of 3 x 300, in a process that imported the "
             "modules named (fork copies page tables and the child's exit unmaps them: both grow with the "
             "parent's resident memory; and every fork runs the at-fork hooks the imported modules registered, "
             "Python code whose first writes copy pages). The fork server is a fresh interpreter with the "
             "fork server's row's imports; before, it was a fork of the master (the last rows).", "",
             "| forking process | RSS (MB) | fork+exit+wait (ms) | child's CPU by its first line (ms) | "
             "child's page faults by its first line |", "| --- | --- | --- | --- | --- |"]
    for label, code in cases:
        out = subprocess.run([PYTHON, "-c", _FORK_PROBE, code], capture_output=True, text=True, cwd=REPO, env=env())
        if out.returncode != 0:
            lines.append(f"| {label} | error | {out.stderr.strip()[-80:]} |")
            continue
        r, ms, cpu, faults = out.stdout.split()
        lines.append(f"| {label} | {r} | {ms} | {cpu} | {faults} |")
    heavy = subprocess.run(
        [PYTHON, "-c", "import sys, phoenix.cli.main, phoenix.master.arbiter; "
         "print(' '.join(sorted(m for m in sys.modules if '.' not in m and not m.startswith('_'))))"],
        capture_output=True, text=True, cwd=REPO, env=env()).stdout.split()
    suspects = [m for m in heavy if m in {"prometheus_client", "rich", "http", "email", "ssl", "wsgiref", "urllib",
                                           "daemon", "asyncio", "decimal", "xml", "uuid", "socketserver"}]
    lines += ["", f"Top-level modules loaded by `phoenix start` that a master loop does not need on every turn: "
              f"{', '.join(suspects) or 'none of the usual suspects'}.", ""]
    return "\n".join(lines) + "\n"


def profile_heartbeats(reg: Registry, work: Path, n: int, seconds: float) -> str:
    state = work / "hb"
    master = beating_master(reg, state, n)
    try:
        try:
            master.grow_to(n, timeout=90.0)
        except RuntimeError as exc:
            n = master.running_count()  # profile what it holds: that is where it struggles
            note = f"(Could not reach the planned size: {str(exc).split(';')[0]}; profiled at {n}.) "
        else:
            note = ""
        time.sleep(2.0)
        raw = work / "hb.raw"
        b0 = master.live()["master"]["beats"]
        c0 = cpu_sample(master.pid)
        # Blocking mode (py-spy pauses the master for each sample): the only
        # mode in which it tells a thread sleeping in epoll_wait from one running.
        spy = reg.popen([_py_spy(), "record", "--threads", "-r", "250", "-f", "raw", "-o", str(raw),
                         "--pid", str(master.pid), "-d", str(int(seconds))], log=work / "py-spy-hb.log")
        spy.wait(timeout=seconds + 60)
        c1 = cpu_sample(master.pid)
        b1 = master.live()["master"]["beats"]
    finally:
        master.stop()
    per = (c1.ns - c0.ns) / 1e3 / max(1, b1 - b0)
    return (f"## Heartbeats: the master with {n} children beating at 5 Hz ({seconds:.0f} s, on-CPU only)\n\n"
            f"{note}Under the sampler: {(c1.ns - c0.ns) / 1e9 / (c1.wall - c0.wall):.1%} of a core, "
            f"{per:.1f} us per beat "
            f"(the sampler itself adds a little).\n\n" + summarize(raw, "MainThread"))


_CHILD_RUN = r"""
import gc, json, os, resource, socket, sys
sys.argv = ["phoenix"]
import phoenix.child.forkserver
from phoenix.child import run as child
from phoenix.app import load_app, resolve_target
load_app("bench.apps:noop_app")
gc.freeze()
work = os.environ["PHOENIX_PROFILE_DIR"]
path = os.path.join(work, "steps.sock")
listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
listener.bind(path)
listener.listen(16)
n = 300
before = resource.getrusage(resource.RUSAGE_CHILDREN)
for i in range(n):
    order_read, order_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(order_write)
        child.run(order_fd=order_read, resolve=resolve_target, socket_path=path, outbox=work, keep_fds=set(),
                  server_fds=(listener.fileno(),))
    os.close(order_read)
    os.write(order_write, child.order(i + 1, f"k{i}", 1, "bench.apps:noop", "{}", 1.0, 10.0))
    os.close(order_write)
    conn, _ = listener.accept()
    while data := conn.recv(65536):
        message = json.loads(data)
        if message["k"] in ("finished", "failed"):
            conn.send(b'{"v":1,"ack":%d}' % message["seq"])
    conn.close()
    os.waitpid(pid, 0)
after = resource.getrusage(resource.RUSAGE_CHILDREN)
user = (after.ru_utime - before.ru_utime) / n * 1000
system = (after.ru_stime - before.ru_stime) / n * 1000
print(f"{user:.3f} {system:.3f} {(after.ru_minflt - before.ru_minflt) / n:.0f}")
"""


def profile_child_run(work: Path) -> str:
    """A whole job child as the fork server forks it (phoenix.child.run with a
    no-op job, its order, its connection, its beat thread, its acknowledged
    final), with this process as the master: CPU and page faults per child."""
    out = subprocess.run([PYTHON, "-c", _CHILD_RUN], capture_output=True, text=True, cwd=REPO,
                         env={**env(), "PHOENIX_PROFILE_DIR": str(work)})
    lines = ["## A whole job child, forked as the fork server forks it", "",
             "300 children, each `phoenix.child.run` for a no-op job (order read, title, connection, beat "
             "thread, job, final sent and acknowledged, exit), forked from a fresh interpreter that imported "
             "what the fork server imports; this process plays the master. Per child:", ""]
    if out.returncode != 0:
        return "\n".join(lines + [f"error: {out.stderr.strip()[-300:]}"]) + "\n\n"
    user, system, faults = out.stdout.split()
    lines += ["| user (ms) | system (ms) | page faults |", "| --- | --- | --- |", f"| {user} | {system} | {faults} |",
              "", "A bare interpreter's fork + `_exit` is about 64 page faults (the fork-cost table above): the "
              "rest is the first write, after fork, to each page the child's Python touches (reference counts "
              "of shared objects, the interpreter's own state in libpython's data), each a copy-on-write "
              "fault.", ""]
    return "\n".join(lines) + "\n"


MASTER_IMPORTS = "phoenix.cli.main, phoenix.master.arbiter"  # what `phoenix start` imports


def profile_imports() -> str:
    out = subprocess.run([PYTHON, "-X", "importtime", "-c", f"import {MASTER_IMPORTS}, bench.apps"],
                         capture_output=True, text=True, cwd=REPO, env=env())
    rows = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), len(m.group(3)), m.group(4)))
    top = sorted((r for r in rows if r[1] <= 5), reverse=True)[:15]
    total = sum(r[0] for r in rows if r[1] == 1)
    lines = ["## Replacement: what the new image imports before it can read the socket", "",
             f"`python -X importtime -c 'import {MASTER_IMPORTS}, bench.apps'`: {total / 1000:.0f} ms of "
             f"imports in all (top-level sum); the largest (cumulative, nested ones indented by depth):", "",
             "| cumulative (ms) | module |", "| --- | --- |"]
    for cum, depth, name in top:
        lines.append(f"| {cum / 1000:.1f} | {'. ' * (depth - 1)}{name} |")
    return "\n".join(lines) + "\n\n"


def _private_by_mapping(pid: int) -> dict[str, int]:
    out: dict[str, int] = collections.Counter()
    name = "?"
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if parts and re.match(r"^[0-9a-f]+-[0-9a-f]+$", parts[0]):
            path = parts[5] if len(parts) > 5 else "[anon]"
            name = re.sub(r".*/", "", path)
        elif parts and parts[0] in ("Private_Clean:", "Private_Dirty:"):
            out[name] += int(parts[1])
    return out


def profile_memory(reg: Registry, work: Path, n: int) -> str:
    state = work / "mem"
    master = beating_master(reg, state, n)
    master.grow_to(n, timeout=90.0)
    d = work / "memb"
    d.mkdir()
    sock, count, pidfile = d / "r.sock", d / "count", d / "pids"
    count.write_bytes(b"\0" * 8)
    receiver = reg.popen([PYTHON, "-m", "bench.bare", "receive", str(sock), str(count)])
    try:
        st = master.wait_running(n)
        while not sock.exists():
            time.sleep(0.01)
        senders = reg.popen([PYTHON, "-m", "bench.bare", "senders", str(sock), str(n), "0.2", str(pidfile)])
        while not pidfile.exists():
            time.sleep(0.05)
        bare_pids = [int(x) for x in pidfile.read_text().split()]
        reg.add_many(bare_pids)
        time.sleep(2.0)
        ph_pids = [int(r["pid"]) for r in st["running"].values()]
        ph = collections.Counter()
        bare = collections.Counter()
        for pid in ph_pids:
            ph.update(_private_by_mapping(pid))
        for pid in bare_pids:
            bare.update(_private_by_mapping(pid))
        master_rss = rss_kb(master.pid)
        reg.stop(senders.pid, timeout=30)
    finally:
        master.stop()
        reg.stop(receiver.pid)
    names = sorted(set(ph) | set(bare), key=lambda k: -(ph[k] / len(ph_pids) - bare[k] / len(bare_pids)))
    lines = [f"## Memory: private pages per child, by mapping ({n} children each)", "",
             f"Master RSS meanwhile: {(master_rss or 0) / 1024:.1f} MB. Mean kB of Private_Clean + Private_Dirty "
             f"per child, a Phoenix child against a bare forked child (bench.bare senders) that beats the same way:",
             "", "| mapping | Phoenix child (kB) | bare child (kB) | difference |", "| --- | --- | --- | --- |"]
    for k in names[:12]:
        a, b = ph[k] / len(ph_pids), bare[k] / len(bare_pids)
        lines.append(f"| {k} | {a:.0f} | {b:.0f} | {a - b:+.0f} |")
    lines.append(f"| total | {sum(ph.values()) / len(ph_pids):.0f} | {sum(bare.values()) / len(bare_pids):.0f} | "
                 f"{sum(ph.values()) / len(ph_pids) - sum(bare.values()) / len(bare_pids):+.0f} |")
    return "\n".join(lines) + "\n\n"


def profile_spawn_burst(reg: Registry, work: Path, n: int) -> str:
    """Raise the slots from 0 to n in one SIGHUP and count the healthy
    children the master then kills for heartbeat_timeout."""
    state = work / "burst"
    master = beating_master(reg, state, n)
    try:
        t0 = time.time()
        master.set_workers(n)
        time.sleep(12.0)  # the 5 s timeout, twice, and some
        spawns = [e.at for e in master.events("spawn", since=t0)]
        kills = master.events("kill", since=t0)
        st = master.live()
    finally:
        master.stop()
    first_kill = f"{min(k.at for k in kills) - t0:.1f} s" if kills else "-"
    gaps = sorted((b - a for a, b in zip(spawns, spawns[1:], strict=False)), reverse=True)
    return (f"## Spawn burst: 0 -> {n} slots in one SIGHUP, every child healthy\n\n"
            f"{len(spawns)} spawns logged in the 12 s after the SIGHUP (first attempts and re-runs), the first "
            f"{min(n, len(spawns))} within {(spawns[min(n, len(spawns)) - 1] - spawns[0]) if spawns else 0:.2f} s; "
            f"{len(kills)} kills for heartbeat_timeout (first {first_kill} after the SIGHUP), "
            f"{len(st['running'])} running at the end. Longest gaps between consecutive spawns: "
            f"{', '.join(f'{g * 1000:.0f} ms' for g in gaps[:3])}. Every child here beats at 5 Hz: each kill is "
            "a healthy child that could not get a beat into the 10-datagram queue for the whole timeout.\n\n")


def main(quick: bool, out: Path) -> int:
    work = Path(tempfile.mkdtemp(prefix="phxp-", dir="/tmp"))
    reg = Registry()
    sections: list[str] = []
    say = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731
    t0 = time.monotonic()
    try:
        say("profile: throughput")
        sections.append(profile_throughput(reg, work, 500 if quick else 2000))
        say("profile: fork cost")
        sections.append(profile_fork_cost())
        say("profile: heartbeats")
        sections.append(profile_heartbeats(reg, work, 200 if quick else 1000, 5 if quick else 10))
        say("profile: a whole job child")
        sections.append(profile_child_run(work))
        say("profile: imports")
        sections.append(profile_imports())
        say("profile: spawn burst")
        sections.append(profile_spawn_burst(reg, work, 250 if quick else 1000))
        say("profile: memory")
        sections.append(profile_memory(reg, work, 100 if quick else 300))
    finally:
        left = reg.cleanup()
        if left:
            say(f"stopped {len(left)} leftover process(es) by pid")
        shutil.rmtree(work, ignore_errors=True)
    head = (f"# Phoenix profiles\n\n`python -m bench --profile{' --quick' if quick else ''}`, "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {time.monotonic() - t0:.0f} s, load average at end {loadavg()}. "
            "py-spy samples the master from outside (--nonblocking over whole runs, blocking for the heartbeat "
            "window so that a thread asleep in epoll_wait is told apart); percentages are of the master's "
            "main-thread samples. See RESULTS.md for the measurements these explain.\n\n")
    (out / "PROFILE.md").write_text(head + "\n".join(sections))
    say(f"wrote {out / 'PROFILE.md'}")
    return 0

