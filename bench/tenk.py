"""Many children on one host (issue 22, item 5): N sleeping jobs beating at
1 Hz (bench.apps:tenk_app, 5 s heartbeat_timeout), all slots opened at
once, as an operator would start them.

    python -m bench.tenk [N] [--usr2 K] [--write]

Measured, each from its own source: the limits the master found at start
(the slots they carry: `phoenix.master.slots`); the spawn timeline (running
jobs read from the journal, read-only, every 2 s: the rate per step and the
seconds until all N run); the master's CPU over 20 s of steady state
(schedstat) and its RSS; the memory per child (USS and PSS from
smaps_rollup, sampled over 50 children, with the machine's used memory
before and after as a cross-check); `phoenix status` wall time (the whole
command, piped) and the master's share of it (one status request on the
control socket); then K x USR2 with the children running: exec -> ready,
kills logged (there must be none), and the beats the new image found
missing. N defaults to the most slots this machine's limits carry, capped at
10,000; `--write` appends the table to bench/RESULTS.md. Every process is
stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.master import PhoenixMaster
from bench.procs import Registry, cpu_ns, loadavg, median, rss_kb, smaps_rollup, tool
from phoenix.master.slots import SlotLimit, read_task_limits
from phoenix.wire import control

HERE = Path(__file__).resolve().parent
STEADY_SECONDS = 20.0
MEMORY_SAMPLE = 50


def used_mb() -> int:
    """The machine's used memory (MemTotal - MemAvailable), MB."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) // 1024


def largest_n() -> int:
    """The most slots this machine's limits carry (what the master itself would allow), at most 10,000."""
    return min(10_000, SlotLimit(10_000).fit(10_000))


def run(n: int, usr2_rounds: int, say: Any = print) -> dict[str, Any]:
    reg = Registry()
    out: dict[str, Any] = {"n": n, "load_before": loadavg(), "used_mb_before": used_mb(),
                           "task_limits": [f"{limit.setting}={limit.value}" for limit in read_task_limits()]}
    with tempfile.TemporaryDirectory(prefix="phoenix-tenk-") as scratch:
        state = Path(scratch) / "state"
        master = PhoenixMaster(reg, state, "bench.apps:tenk_app", workers=0, use_config_file=True)
        master.submit_many(("bench.apps:sleeper", {"s": 3600}, f"sleeper-{i}") for i in range(n))
        master.start()
        try:
            out.update(_grow(master, n, say))
            out.update(_steady(master, reg, say))
            out.update(_status(master, state))
            out["usr2"] = [_usr2(master, i, say) for i in range(usr2_rounds)]
            out["kills"] = len(master.events("kill"))
        finally:
            master.stop(timeout=120.0)
            left = reg.cleanup()
            if left:
                say(f"stopped {len(left)} leftover process(es) by pid")
    out["load_after"] = loadavg()
    return out


def _grow(master: PhoenixMaster, n: int, say: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    master.set_workers(n)
    timeline: list[tuple[float, int]] = []
    while True:
        time.sleep(2.0)
        running = master.running_count()
        timeline.append((round(time.monotonic() - t0, 1), running))
        say(f"  {timeline[-1][0]:6.1f} s: {running} running [load {loadavg()}]")
        if running >= n:
            break
        if time.monotonic() - t0 > 600:
            raise RuntimeError(f"only {running} of {n} running after 600 s; see {master.log_path}")
    rates: list[tuple[int, float]] = []
    for (t_a, r_a), (t_b, r_b) in zip(timeline, timeline[1:], strict=False):
        rates.append((r_b, round((r_b - r_a) / (t_b - t_a), 1)))
    return {"all_started_s": timeline[-1][0], "timeline": timeline, "rates": rates}


def _steady(master: PhoenixMaster, reg: Registry, say: Any) -> dict[str, Any]:
    time.sleep(5.0)  # the last spawns' first checks pass
    live = master.live(timeout=30.0)
    pids = [int(r["pid"]) for r in live["running"].values()]
    before, t = cpu_ns(master.pid) or 0, time.monotonic()
    time.sleep(STEADY_SECONDS)
    cpu = ((cpu_ns(master.pid) or 0) - before) / 1e9 / (time.monotonic() - t)
    sample = pids[:: max(1, len(pids) // MEMORY_SAMPLE)][:MEMORY_SAMPLE]
    rollups = [smaps_rollup(pid) for pid in sample]
    uss: list[float] = [r.get("Private_Clean", 0) + r.get("Private_Dirty", 0) for r in rollups if r]
    pss: list[float] = [r.get("Pss", 0) for r in rollups if r]
    say(f"  steady: master {cpu:.1%} of a core, RSS {rss_kb(master.pid)} kB; child USS {median(uss):.0f} kB, "
        f"PSS {median(pss):.0f} kB")
    return {"master_cpu": cpu, "master_rss_kb": rss_kb(master.pid), "child_uss_kb": median(uss),
            "child_pss_kb": median(pss), "used_mb_running": used_mb()}


def _status(master: PhoenixMaster, state: Path) -> dict[str, Any]:
    t = time.monotonic()
    control.request(master.paths.control_socket, {"cmd": "status"}, timeout=30.0)
    request = time.monotonic() - t
    # As installed: bytecode written (the first run writes it where PYTHONDONTWRITEBYTECODE kept it from being).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PHOENIX_STATE_DIR"] = str(state)
    for _warm_then_timed in range(2):
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.monotonic()
        done = subprocess.run([tool("phoenix"), "status"], env=env, capture_output=True, timeout=60)
        whole = time.monotonic() - t
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"phoenix status exited {done.returncode}: {done.stderr[-300:]!r}")
    cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    return {"status_s": whole, "status_cpu_s": cpu, "status_request_s": request}


def _usr2(master: PhoenixMaster, i: int, say: Any) -> dict[str, Any]:
    generation = int(master.live(timeout=30.0)["master"]["generation"])
    at = time.time()
    os.kill(master.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 120
    while not any(int(e.fields.get("generation", 0)) == generation + 1 for e in master.events("ready", since=at)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no generation {generation + 1} after USR2; see {master.log_path}")
        time.sleep(0.1)
    exec_at = next(e.at for e in master.events("exec", since=at))
    ready_at = next(e.at for e in master.events("ready", since=at))
    time.sleep(3.0)  # a beat interval and more: every child has beaten to the new image
    live = master.live(timeout=30.0)["master"]
    row = {"exec_to_ready_s": ready_at - exec_at, "beats_missing": live["beats_missing"],
           "running": live["slots_used"], "kills": len(master.events("kill", since=at))}
    say(f"  USR2 {i + 1}: exec -> ready {row['exec_to_ready_s']:.2f} s, {row['running']} running, "
        f"{row['beats_missing']} beats missing, {row['kills']} kills")
    return row


def burst(children: int = 200, rounds: int = 3) -> dict[str, Any]:
    """Starts per second of a burst, as the scheduler makes them (take a
    child, commit its attempt durably, give the order), with the fork
    requests of the jobs ahead in flight (`take(ahead)`) against one request
    at a time (`take()`: the behaviour before), alternated in one process: a
    real fork server and a real journal; each child gets an empty order and
    exits unrun."""
    from phoenix.app import App
    from phoenix.config import Config
    from phoenix.linux.clock import SYSTEM
    from phoenix.linux.paths import StatePaths
    from phoenix.master.loop import Loop
    from phoenix.master.spawner import Spawner
    from phoenix.master.specs import JobSpecs
    from phoenix.store.sqlite import Journal

    rates: dict[str, list[float]] = {"ahead": [], "one at a time": []}
    with tempfile.TemporaryDirectory(prefix="phoenix-burst-") as scratch:
        config = Config(state_dir=str(Path(scratch) / "state"))
        paths = StatePaths(Path(config.state_dir))
        paths.ensure()
        loop = Loop(SYSTEM)
        loop.open()
        spawner = Spawner("bench.apps:tenk_app", lambda: config, paths, JobSpecs(App("b"), lambda: config), loop,
                          lambda: children, lambda: True)
        journal = Journal(paths.journal)
        try:
            spawner.check_app_threads()
            first = spawner.take()  # starts the server
            os.close(first.order_fd)
            os.waitpid(first.pid, 0)
            server = spawner.server
            assert server is not None
            while not server.ready:
                server.read()
                time.sleep(0.01)
            for i in range(rounds):
                for way in rates:
                    journal.submit_many(("bench.apps:sleeper", "{}", f"{way}-{i}-{n}") for n in range(children))
                    jobs = journal.pending(children)
                    started = time.monotonic()
                    for index, job in enumerate(jobs):
                        waiting = spawner.take(len(jobs) - index - 1) if way == "ahead" else spawner.take()
                        journal.begin_attempt(job, 1, waiting.pid, waiting.start_time)
                        waiting.send(b"")
                    rates[way].append(len(jobs) / (time.monotonic() - started))
        finally:
            spawner.discard()
            journal.close()
            loop.selector.close()
    ratios = sorted(a / b for a, b in zip(rates["ahead"], rates["one at a time"], strict=True))
    return {"children": children, "rates": rates, "ratio_min": ratios[0], "ratio_median": median(ratios),
            "ratio_max": ratios[-1], "load": loadavg()}


def markdown(r: dict[str, Any]) -> str:
    n = r["n"]
    steps = [f"{running:,}: {rate:g}/s" for running, rate in r["rates"][:: max(1, len(r["rates"]) // 8)]]
    lines = [f"## {n:,} children on one host (`python -m bench.tenk {n}`), {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"Load average before: {r['load_before']}; after: {r['load_after']}. Task limits: "
             f"{', '.join(r['task_limits']) or '-'}.", "",
             "| figure | target | measured |", "| --- | --- | --- |",
             f"| all {n:,} started | within 60 s | {r['all_started_s']:.0f} s |",
             f"| master CPU, steady, 1 Hz beats | under 10 % of a core | {r['master_cpu']:.1%} |",
             f"| master RSS | stated | {r['master_rss_kb'] / 1024:.0f} MB |",
             f"| memory per child | stated | USS {r['child_uss_kb'] / 1024:.2f} MB, "
             f"PSS {r['child_pss_kb'] / 1024:.2f} MB "
             f"(machine: {(r['used_mb_running'] - r['used_mb_before']) / n:.2f} MB used per child) |",
             f"| `phoenix status` (whole command) | under 1 s | {r['status_s']:.2f} s wall, "
             f"{r.get('status_cpu_s', float('nan')):.2f} s CPU (the master's answer: {r['status_request_s']:.2f} s) |"]
    for i, u in enumerate(r["usr2"]):
        lines.append(f"| USR2 {i + 1}: exec -> ready, beats missing, kills | 0 lost, 0 kills | "
                     f"{u['exec_to_ready_s']:.2f} s, {u['beats_missing']}, {u['kills']} |")
    lines += ["", f"Spawn rate by running children: {'; '.join(steps)}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, help="children (default: the most this machine's limits carry, "
                                                         "at most 10,000)")
    parser.add_argument("--usr2", type=int, default=3, help="replacements with the children running")
    parser.add_argument("--write", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("--burst", action="store_true", help="only: starts per second of a burst, forks asked "
                                                             "ahead against one at a time (about a minute)")
    args = parser.parse_args()
    if args.burst:
        b = burst()
        print(f"burst of {b['children']} starts [load {b['load']}]: " + "; ".join(
            f"{way} {', '.join(f'{r:.0f}' for r in rates)}/s" for way, rates in b["rates"].items())
            + f"; ratio min/median/max {b['ratio_min']:.2f}/{b['ratio_median']:.2f}/{b['ratio_max']:.2f}x")
        return
    n = args.n or largest_n()
    print(f"{n:,} sleeping children beating at 1 Hz [load {loadavg()}]")
    result = run(n, args.usr2)
    table = markdown(result)
    print(table)
    if args.write:
        with open(HERE / "RESULTS.md", "a") as f:
            f.write("\n" + table)


if __name__ == "__main__":
    main()
