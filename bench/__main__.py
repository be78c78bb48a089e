"""`python -m bench [--quick]`: every figure of the benchmark issue, each side
by side with its peer in the same run; prints a table of ratios, writes
bench/RESULTS.md (and results.json) and bench/scaling.png.

    python -m bench --quick        # < 2 minutes: smaller counts, same method
    python -m bench                # full: the issue's counts (~6-10 minutes)
    python -m bench --only throughput,beats
    python -m bench --profile      # py-spy profiles of the master -> bench/PROFILE.md
    python -m bench --render       # rebuild RESULTS.md and scaling.png from results.json

Peers: pip install -e '.[bench]' (gunicorn, rq, redis, matplotlib, rich);
RQ also needs a redis-server binary (apt-get install redis-server), else it is
skipped with a note. Every process started is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import beats, hang, jobspeed, replace, spawn, store, throughput
from bench.procs import Registry, cpu_available, cpu_times, loadavg
from bench.report import Report, Row, code_identity, peer_versions, plot_scaling, print_table, write_markdown

HERE = Path(__file__).resolve().parent
FIGURES = ("throughput", "beats", "hang", "replace", "spawn", "jobspeed")
# Run only when named (--only store): they need root and network namespaces (bench/store.py).
EXTRA_FIGURES = ("store",)
# The results.json keys of each figure: a run of some figures keeps the others' last results.
FIGURE_KEYS = {"throughput": ("throughput",), "beats": ("beats_phoenix", "beats_bare"),
               "hang": ("hang", "hang_tuned"), "replace": ("replace_phoenix", "replace_gunicorn", "imports"),
               "spawn": ("spawn",), "store": ("store",), "jobspeed": ("jobspeed",)}

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "throughput_jobs": 200, "throughput_reps": 3,
        "scale_points": [100, 200], "window": 3.0, "settle": 1.0, "beat_figure_at": 200,
        "hang_children": 150, "hang_hung": 10, "hang_children_large": 300, "frozen_children": 100,
        "replace_children": 100, "replace_rounds": 3,
        "spawn_api": 80, "spawn_cli": 4,
        "jobspeed_rounds": 3, "jobspeed_seconds": 1.0,
    },
    "full": {
        "throughput_jobs": 2000, "throughput_reps": 5,
        "scale_points": [100, 500, 1000, 2000], "window": 10.0, "settle": 3.0, "beat_figure_at": 1000,
        "hang_children": 1000, "hang_hung": 50, "hang_children_large": 2000, "frozen_children": 400,
        "replace_children": 1000, "replace_rounds": 5,
        "spawn_api": 500, "spawn_cli": 20,
        "jobspeed_rounds": 5, "jobspeed_seconds": 2.0,
    },
}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def ok(value: float, limit: float, below: bool = True) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value <= limit if below else value >= limit


def throughput_rows(r: dict[str, Any], report: Report) -> None:
    n, middle, jps = r["n"], r.get("median", r["best"]), r["jobs_per_s"]
    per_rep = r.get("ratio_per_rep", {})
    checks = r.get("peer_checks", {})

    def spread(peer: str, fmt: str) -> str:
        ratios = sorted(per_rep.get(peer, []))
        return f"per repetition min {fmt.format(ratios[0])}, max {fmt.format(ratios[-1])}" if ratios else ""

    def suspect(peer: str) -> str:
        if "calibration" not in r:
            return "peer run suspect: not calibrated (measured before the bench checked its peers)"
        why = checks.get(peer, {}).get("suspect", "")
        return f"peer run suspect: {why}" if why else ""

    ph = f"{jps['phoenix']:.0f} jobs/s ({middle['phoenix']:.2f} s, median)"
    fig = f"throughput: {n:,} no-op jobs, 2 slots, journal durable"
    ratio = jps["phoenix"] / jps["pool"]
    report.rows.append(Row(fig, ph, "multiprocessing.Pool(2, maxtasksperchild=1)",
                           f"{jps['pool']:.0f} jobs/s ({middle['pool']:.2f} s)", f"{ratio:.2f}x", ">= 1.5x the Pool",
                           ok(ratio, 1.5, below=False), spread("pool", "{:.2f}x"), suspect("pool")))
    if "rq" in jps:
        ratio = jps["phoenix"] / jps["rq"]
        timed = ", timed to the last job's end" if "rq_runs" in r else ", timed to the workers' exit"
        report.rows.append(Row(fig, ph, "RQ: 2 x `rq worker --burst`" + timed,
                               f"{jps['rq']:.0f} jobs/s ({middle['rq']:.2f} s)", f"{ratio:.1f}x", ">= 5x RQ",
                               ok(ratio, 5, below=False), spread("rq", "{:.1f}x"), suspect("rq")))
    else:
        report.rows.append(Row(fig, ph, "RQ", r["rq_note"] or "skipped", "-", ">= 5x RQ", None))
    for key, what in (("batch_cb", "an on_finished callback on every job"), ("batch", "no callback")):
        if key not in jps:
            continue
        batch = f"throughput as a user runs a batch: {n:,} no-op jobs submitted by a startup hook, {what}"
        speeds = sorted(r["batch_per_rep"][key]["speed"])
        cpus = sorted(r["batch_per_rep"][key]["cpu"])
        ratio = jps[key] / jps["pool"]
        report.rows.append(Row(batch, f"{jps[key]:.0f} jobs/s ({middle[key]:.2f} s, median)",
                               "multiprocessing.Pool(2, maxtasksperchild=1).map",
                               f"{jps['pool']:.0f} jobs/s ({middle['pool']:.2f} s)", f"{ratio:.2f}x",
                               ">= 0.9x the Pool", ok(ratio, 0.9, below=False),
                               f"per repetition min {speeds[0]:.2f}x, max {speeds[-1]:.2f}x", suspect("pool")))
        cpu_ratio = r["cpu_ms_per_job"][key] / r["cpu_ms_per_job"]["pool"]
        report.rows.append(Row(batch + ": CPU per job", f"{r['cpu_ms_per_job'][key]:.2f} ms (median)",
                               "multiprocessing.Pool(2, maxtasksperchild=1).map",
                               f"{r['cpu_ms_per_job']['pool']:.2f} ms", f"{cpu_ratio:.2f}x", "<= 1.05x the Pool's",
                               ok(cpu_ratio, 1.05), f"per repetition min {cpus[0]:.2f}x, max {cpus[-1]:.2f}x",
                               suspect("pool")))  # the same Pool runs: suspect as its speed row is
    ratio = jps["phoenix"] / jps["bare"]
    report.rows.append(Row(fig, ph, "bare os.fork/_exit/waitpid loop (ceiling)",
                           f"{jps['bare']:.0f} jobs/s ({middle['bare']:.2f} s)", f"{ratio:.0%} of ceiling",
                           ">= 40 % of the ceiling", ok(ratio, 0.40, below=False), spread("bare", "{:.0%}"),
                           suspect("bare")))
    report.details += [
        f"### Throughput ({n:,} jobs, median of {r['reps']}, contenders alternated in each repetition)", "",
        "Wall time from starting the command to its exit, interpreter start-up included for every contender; "
        "RQ's to the end of its last job (its workers' exit is not waited for: see below). "
        "Phoenix: `phoenix start bench.apps:noop_app --workers 2 --exit-when-done` on a fresh state directory "
        "whose journal already holds the jobs (SQLite WAL, synchronous=NORMAL, on ext4). batch_cb and batch: "
        "`phoenix start bench.apps:batch_app --workers 2 --exit-when-done` on an empty state directory, its "
        "startup hook submitting the jobs (one `Client.submit_many`), with an `on_finished` callback on every "
        "job (batch_cb; each run checked: every callback recorded done) and without (batch).", "",
        "| contender | runs (s) | min (s) | median (s) | max (s) | jobs/s (median) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k, v in r["all"].items():
        med = middle.get(k, min(v))
        report.details.append(f"| {k} | {', '.join(f'{x:.2f}' for x in v)} | {min(v):.2f} | {med:.2f} | "
                              f"{max(v):.2f} | {n / med:.0f} |")
    report.details.append("")
    if "cpu" in r:
        report.details += [
            "CPU per job (utime + stime of the contender's whole process tree, from wait4's rusage: what decides "
            "the rate when the cores are the bottleneck, whatever else runs on the machine; RQ's: its workers and "
            "their work horses, not redis-server):", "",
            "| contender | CPU per job, each repetition (ms) | median (ms) | Phoenix / it |",
            "| --- | --- | --- | --- |"]
        mine = r["cpu_ms_per_job"]["phoenix"]
        for k, v in r["cpu"].items():
            med = r["cpu_ms_per_job"][k]
            report.details.append(f"| {k} | {', '.join(f'{x / n * 1000:.2f}' for x in v)} | {med:.2f} | "
                                  f"{mine / med:.2f} |")
        report.details += ["", f"Load average (1, 5, 15 min) at the start of each repetition: {'; '.join(r['loads'])}.",
                           ""]
    if checks:
        report.details += [
            "Peer calibration: before the repetitions each peer ran alone on a short batch, measured from its own "
            "account of the run, not the harness's clock (bench.bare's in-process timer; RQ's job records): its "
            "start-up (launch to its first job) and its rate (first job's start to last job's end). Its figure in "
            "the run is compared with the prediction start-up + jobs / rate; outside "
            f"{1 / throughput.SUSPECT_FACTOR:.1f}x-{throughput.SUSPECT_FACTOR:.0f}x the row says 'peer run suspect' "
            "and backs no target (bench/throughput.py, SUSPECT_FACTOR, says why that factor).", "",
            "| peer | alone: jobs | alone: start-up (s) | alone: jobs/s | predicted for the run (s) "
            "| in the run (s, median) | predicted / run | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for peer, c in checks.items():
            cal = r["calibration"][peer]
            report.details.append(f"| {peer} | {cal['n']} | {cal['startup_seconds']:.2f} | {cal['jobs_per_s']:.0f} | "
                                  f"{c['predicted_seconds']:.2f} | {middle[peer]:.2f} | {c['agreement']:.2f}x | "
                                  f"{'suspect' if c['suspect'] else 'consistent'} |")
        report.details.append("")
    if r.get("rq_runs"):
        lags = [lag for run in r["rq_runs"] for lag in run["exit_after_last_job_s"]]
        killed = sum(lag is None for lag in lags)
        exited = [lag for lag in lags if lag is not None]
        report.details += [
            f"RQ workers after the last job: {len(exited)} of {len(lags)} exited"
            + (f" (within {max(exited):.2f} s)" if exited else "")
            + (f"; {killed} still in their teardown after {throughput.RQ_EXIT_GRACE:.0f} s, killed (RQ 3.0.0 on "
               "redis-py >= 8.2 can wait 60 s there: bench/throughput.py)" if killed else "") + ".", ""]
    if r.get("rq_note"):
        report.notes.append(f"RQ: {r['rq_note']}")


def beats_rows(ph: dict[str, Any], bare: dict[str, Any], mode: dict[str, Any], quick: bool, report: Report) -> None:
    at = mode["beat_figure_at"]
    pp = {p["n"]: p for p in ph["points"]}
    bp = {p["n"]: p for p in bare["points"]}
    failed = ph.get("failed")
    if failed:
        report.notes.append(f"heartbeat run: Phoenix could not reach {failed['n']:,} beating children "
                            f"({failed['error']}; {failed['kills']} kills logged; load {failed['load']}).")
    if at not in pp or not pp or 100 not in pp:
        at = max(pp) if pp else None
    if at is None or at not in bp:
        report.rows.append(Row("heartbeat cost", "not measured", "-", "-", "-", "-", None,
                               failed["error"] if failed else ""))
        return
    p, b = pp[at], bp[at]
    ratio = p["us_per_beat"] / b["us_per_beat"]
    report.rows.append(Row(f"heartbeat cost: {at:,} children x 5 Hz, CPU per beat",
                           f"{p['us_per_beat']:.1f} us/beat",
                           "bare Python recvmsg loop on a shared datagram socket, SO_PASSCRED, same stream",
                           f"{b['us_per_beat']:.1f} us/beat", f"{ratio:.2f}x", "<= 1.0x the bare loop",
                           ok(ratio, 1.0)))
    projected = p["us_per_beat"] * 1e-6 * 1000 * 5
    if at == 1000:
        total, label = p["cpu_frac"], f"{p['cpu_frac']:.1%} of one core"
    else:
        total, label = projected, (f"{p['cpu_frac']:.1%} of one core at {at}; projected to 1,000 x 5 Hz: "
                                   f"{projected:.1%}")
    report.rows.append(Row(f"heartbeat cost: master CPU in all, {at:,} children x 5 Hz", label, "bare recvmsg loop",
                           f"{b['cpu_frac']:.1%} of one core", f"{p['cpu_frac'] / b['cpu_frac']:.2f}x",
                           "<= 10 % of one core at 1,000 children", ok(total, 0.10)))
    top = max(pp)
    scale = pp[top]["us_per_beat"] / pp[100]["us_per_beat"]
    wanted = max(mode["scale_points"])
    reached = top == wanted
    report.rows.append(Row(f"scaling: per-beat master CPU at {top:,} vs 100 children",
                           f"{pp[top]['us_per_beat']:.1f} us/beat at {top:,}"
                           + ("" if reached else f" ({wanted:,} not reached)"),
                           "Phoenix itself at 100 children",
                           f"{pp[100]['us_per_beat']:.1f} us/beat", f"{scale:.2f}x",
                           "<= 1.3x at 2,000 (O(1) per beat)" + (" [quick: at 200]" if quick else ""),
                           ok(scale, 1.3) if reached else False, "plotted: bench/scaling.png"))
    mem = ph.get("memory", {})
    bmem = bare.get("memory", {})
    if mem:
        rss_mb = mem["master_rss_kb"] / 1024
        report.rows.append(Row(f"memory: master RSS with {mem['n']:,} children", f"{rss_mb:.1f} MB",
                               "the same master before any child", f"{ph['rss_kb_empty'] / 1024:.1f} MB",
                               f"+{rss_mb - ph['rss_kb_empty'] / 1024:.1f} MB", "<= 40 MB with 1,000 children",
                               ok(rss_mb, 40)))
        uss_mb = mem["uss_kb_median"] / 1024
        bare_mb = bmem.get("uss_kb_median", float("nan")) / 1024
        report.rows.append(Row(f"memory: per-child USS, {mem['n']:,} children (median)", f"{uss_mb:.2f} MB",
                               "bare fork of a Python process that imported phoenix, beating from a thread",
                               f"{bare_mb:.2f} MB", f"+{uss_mb - bare_mb:.2f} MB over the bare child",
                               "<= 2 MB beyond the job's own (the job allocates nothing)", ok(uss_mb, 2.0)))
    report.details += [
        "### Heartbeat cost and scaling", "",
        "Receiver CPU from /proc/PID/task/*/schedstat (ns) over a window, divided by the beats it counted in the "
        "window (Phoenix: `master.beats` of the live status; bare loop: its own counter). /proc/PID/stat ticks "
        "(10 ms) agree within a few percent (column 'ticks'). Beats per wake-up: beats divided by the receiver "
        "main thread's voluntary context switches (each one a sleep in epoll_wait).", "",
        "| children | receiver | beats/s | CPU (% of a core) | us/beat | us/beat (ticks) "
        "| beats per wake-up | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in sorted(pp):
        for name, src in (("Phoenix", pp), ("bare loop", bp)):
            if n in src:
                q = src[n]
                report.details.append(f"| {n:,} | {name} | {q['beats_per_s']:.0f} | {q['cpu_frac']:.1%} | "
                                      f"{q['us_per_beat']:.1f} | {q['us_per_beat_ticks']:.1f} | "
                                      f"{q.get('beats_per_wakeup', float('nan')):.2f} | {q['load']} |")
    report.details.append("")
    if mem:
        report.details.append(
            f"Memory at {mem['n']:,} children: master RSS {mem['master_rss_kb'] / 1024:.1f} MB "
            f"(empty: {ph['rss_kb_empty'] / 1024:.1f} MB); child USS median {mem['uss_kb_median'] / 1024:.2f} MB, "
            f"p90 {mem['uss_kb_p90'] / 1024:.2f} MB, max {mem['uss_kb_max'] / 1024:.2f} MB, PSS median "
            f"{mem['pss_kb_median'] / 1024:.2f} MB, RSS median {mem['rss_kb_median'] / 1024:.1f} MB. Bare beating "
            f"child: USS median {bmem.get('uss_kb_median', float('nan')) / 1024:.2f} MB, RSS median "
            f"{bmem.get('rss_kb_median', float('nan')) / 1024:.1f} MB.")
        report.details.append("")
    rejected = {k: v for q in ph["points"] for k, v in (q.get("rejected") or {}).items()}
    disturbed = [q["n"] for q in ph["points"] if q.get("kills_in_window")]
    report.rows.append(Row(f"heartbeat runs: healthy children killed (growing to {max(pp):,})",
                           f"{ph.get('kills', 0)} kills", "-", "-", "-",
                           "0 (not in the issue's table: every child here beats)", ph.get("kills", 0) == 0,
                           f"windows disturbed by kills at: {disturbed}" if disturbed else ""))
    if rejected:
        report.notes.append(f"heartbeat run: rejected messages {rejected}")


def hang_rows(r: dict[str, Any], report: Report) -> None:
    queue = f"net.unix.max_dgram_qlen={r['dgram_qlen']}" if "dgram_qlen" in r else ""
    if r.get("hogs"):
        queue += f", {r['hogs']} CPU hogs"
    report.rows.append(Row(f"hang detection: {r['n']:,} children, {r['hung']} hung, {queue}",
                           f"p99 {r['excess_ms_p99']:.0f} ms, p50 {r['excess_ms_p50']:.0f} ms beyond the timeout",
                           "heartbeat_timeout itself", f"{r['timeout']:.0f} s",
                           f"p99 = {r['excess_ms_p99'] / 1000 / r['timeout']:.1%} of the timeout",
                           "p99 of (kill - last beat - timeout) <= 100 ms, every frozen child, 0 healthy",
                           ok(r["excess_ms_p99"], 100) if r["killed"] == r["hung"] and not r["false_kills"] else False,
                           f"{r['killed']}/{r['hung']} killed, {r['false_kills']} false kills"))
    report.details += [
        f"### Hang detection ({queue})", "",
        f"{r['killed']} of {r['hung']} frozen children killed, {r['false_kills']} other kills. From the master's "
        f"`kill ... after=` field (10 ms resolution): p50 {r['excess_ms_p50']:.0f} ms, "
        f"p99 {r['excess_ms_p99']:.0f} ms, "
        f"max {r['excess_ms_max']:.0f} ms beyond the {r['timeout']:.0f} s timeout. Cross-check (log timestamp minus "
        f"the wall-clock time the job's last beat left it): p50 {r['cross_ms_p50']:.1f} ms, "
        f"p99 {r['cross_ms_p99']:.1f} ms.", "",
    ]


def frozen_rows(r: dict[str, Any], report: Report) -> None:
    report.rows.append(Row(f"master frozen {r['frozen_s']:.0f} s (SIGSTOP), {r['n']:,} children",
                           f"{r['kills']} children killed, {r['running_after']} running after",
                           "-", "-", "-", "0 healthy children killed", r["kills"] == 0 and r["running_after"] == r["n"],
                           f"master_was_away logged {r['master_was_away']}x; load {r['load']}"))


def replace_rows(ph: dict[str, Any], gu: dict[str, Any], imports: dict[str, float], report: Report) -> None:
    blind = ph["blind_s_median"]
    window = blind - imports["app_import_s"]
    g = gu["usr2_to_pidfile_s_median"]
    ratio = window / g
    report.rows.append(Row(f"replacement blind window, {ph['n']:,} running children",
                           f"{fmt_ms(window)} (exec -> ready {fmt_ms(blind)} - app import "
                           f"{imports['app_import_s'] * 1000:.1f} ms)",
                           "gunicorn USR2 -> new master's pidfile, trivial WSGI app", fmt_ms(g), f"{ratio:.2f}x",
                           "<= gunicorn's", ok(ratio, 1.0),
                           f"USR2 -> ready {fmt_ms(ph['usr2_to_ready_s_median'])} incl. preflight"))
    clean = ph["lost_beats"] == 0 and ph["false_kills"] == 0 and ph["children_kept"] == ph["n"]
    report.rows.append(Row(f"replacement: {len(ph['rounds'])} x USR2 with {ph['n']:,} children",
                           f"{ph['lost_beats']} lost beats of {ph['beats_sent']:,}, {ph['false_kills']} false kills, "
                           f"{ph['children_kept']}/{ph['n']} children kept", "-", "-", "-",
                           "zero lost beats, zero false kills", clean,
                           f"{ph.get('beats_waited', 0):,} sends found the queue full and were retried "
                           "(late, not lost)"))
    report.details += [
        "### Replacement", "",
        "| round | USR2 -> exec (preflight; socket still read) | exec -> ready (blind) | of which: exec -> new "
        "image's first log line | adopting | last adopt -> ready | USR2 -> ready | adopted |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, rd in enumerate(ph["rounds"], 1):
        report.details.append(f"| {i} | {fmt_ms(rd['usr2_to_exec_s'])} | {fmt_ms(rd['blind_s'])} | "
                              f"{fmt_ms(rd['exec_to_first_line_s'])} | {fmt_ms(rd['adopting_s'])} | "
                              f"{fmt_ms(rd['last_adopt_to_ready_s'])} | {fmt_ms(rd['usr2_to_ready_s'])} | "
                              f"{rd['adopted']} |")
    report.details += [
        "",
        f"gunicorn USR2 -> new pidfile, each round (alternated with Phoenix's, its children running): "
        f"{', '.join(fmt_ms(x) for x in gu['rounds'])}.",
        "",
        f"The blind window includes the new image's interpreter start-up and imports: `python -c pass` takes "
        f"{fmt_ms(imports['python_startup_s'])}, a whole `phoenix check bench.apps:beat_app` "
        f"{fmt_ms(imports['phoenix_check_s'])}; the app module's own import ({imports['app_import_s'] * 1000:.1f} ms) "
        f"is what is subtracted for the headline. gunicorn's figure includes the same kind of start-up (its new "
        f"master is a fresh interpreter too).",
        "",
    ]


def spawn_rows(r: dict[str, Any], report: Report) -> None:
    parts = r["api_parts_p50_ms"]
    split = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in parts.items())
    report.rows.append(Row("spawn latency, free slot: submit -> job running, p50",
                           f"{r['api_p50_ms']:.1f} ms", "-", "-", f"({split} ms)", "p50 <= 5 ms",
                           ok(r["api_p50_ms"], 5), f"{r['api_samples']} samples, in-process submit"))
    report.rows.append(Row("spawn latency, free slot: submit -> job running, p99",
                           f"{r['api_p99_ms']:.1f} ms", "-", "-", "-", "p99 <= 20 ms", ok(r["api_p99_ms"], 20)))
    after = r["api_parts_p50_ms"]["after_wake"], r.get("api_parts_p99_ms", {}).get("after_wake", float("nan"))
    report.rows.append(Row("spawn latency, free slot: wake -> job running (the master's part), p50 / p99",
                           f"{after[0]:.1f} / {after[1]:.1f} ms", "-", "-", "-", "p50 <= 2 ms, p99 <= 10 ms",
                           ok(after[0], 2) and ok(after[1], 10), "issue 11's spawn target"))
    if "memory" in r:
        mem = r["memory"]
        extra = mem["extra_kb_median"] / 1024
        report.rows.append(Row(f"memory: per-child USS, {mem['n']} sleeping jobs (median)",
                               f"{mem['phoenix']['uss_kb_median'] / 1024:.2f} MB",
                               "bare child forked from a process that imported phoenix, beating from a thread",
                               f"{mem['bare']['uss_kb_median'] / 1024:.2f} MB", f"+{extra:.2f} MB",
                               "<= 1.0 MB beyond the bare child", ok(extra, 1.0)))
    report.rows.append(Row("spawn latency via the `phoenix submit` command (reference)",
                           f"p50 {r['cli_p50_ms']:.0f} ms, p99 {r['cli_p99_ms']:.0f} ms", "-", "-", "-",
                           "(interpreter start-up and imports included)", None, f"{r['cli_samples']} samples"))
    split_after = ", ".join(f"{k} {v:.1f} ms" for k, v in r["after_wake_split_p50_ms"].items())
    report.details += [
        "### Spawn latency", "",
        f"{r['api_samples']} submissions done in-process with the same steps as `phoenix submit` (open the journal, "
        f"submit, close, `wake` on the control socket), one at a time with 4 free slots; the job's first act sends "
        f"CLOCK_MONOTONIC back. p50 {r['api_p50_ms']:.2f} ms, p99 {r['api_p99_ms']:.2f} ms, "
        f"max {r['api_max_ms']:.2f} ms; "
        f"medians of the parts: {split} ms; 'after wake' split at the master's `spawn` log line (ms resolution, "
        f"truncated): {split_after}. p99 of the parts: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in r.get("api_parts_p99_ms", {}).items())
        + f" ms. The `phoenix submit` command adds a Python interpreter and its imports: "
        f"p50 {r['cli_p50_ms']:.0f} ms over {r['cli_samples']} runs.", "",
    ]


def keep_previous_figures(raw: dict[str, Any], path: Path, only: set[str]) -> None:
    """A run of some figures (--only) keeps the last results of the others,
    so that RESULTS.md still shows every figure (each with its own conditions)."""
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    for name, keys in FIGURE_KEYS.items():
        if name in only:
            continue
        for key in keys:
            if key in previous and key not in raw:
                raw[key] = previous[key]
        raw["conditions"] += [c for c in previous.get("conditions", []) if c[0] == name]
        if name in previous.get("failed", {}):
            raw["failed"].setdefault(name, previous["failed"][name])
    raw.setdefault("earlier", {"command": previous.get("command"), "started": previous.get("started")})


def store_details(r: dict[str, Any]) -> list[str]:
    lines = ["### Many hosts: PostgreSQL store (bench/store.py)", "",
             f"PostgreSQL {'with' if r.get('fsync') else 'without'} fsync, on the lab's bridge; hosts are network "
             "namespaces of this machine (same CPUs). Contenders alternate round by round; a warm-up round is "
             "not counted.", "", "| figure | contender | min | median | max |", "| --- | --- | --- | --- | --- |"]
    for fig in ("e2e", "store_path"):
        for name, v in r.get(fig, {}).get("jobs_per_s", {}).items():
            lines.append(f"| {fig} jobs/s | {name} | {v['min']:.0f} | {v['median']:.0f} | {v['max']:.0f} |")
        for name, v in r.get(fig, {}).get("ratios", {}).items():
            lines.append(f"| {fig} ratio | phoenix-pg / {name} | {v['min']:.2f} | {v['median']:.2f} | "
                         f"{v['max']:.2f} |")
    if "recovery" in r:
        v = r["recovery"]["seconds"]
        lines.append(f"| host death -> re-run (s) | phoenix-pg, ttl 30 | {v['min']:.1f} | {v['median']:.1f} | "
                     f"{v['max']:.1f} |")
    return lines + [""]


def build_report(raw: dict[str, Any], out: Path) -> tuple[Report, Path | None]:
    """The table, details and plot, from the raw results alone (so that
    `--render` can rebuild RESULTS.md from results.json)."""
    mode = raw["params"]
    quick = raw["mode"] == "quick"
    report = Report(raw["mode"], raw.get("command", "python -m bench"))
    report.started = raw.get("started", report.started)
    report.load_start = raw.get("load_start", "?")
    report.load_end = raw.get("load_end", "?")
    report.elapsed = raw.get("elapsed", 0.0)
    report.code = raw.get("phoenix_code", "")
    report.versions = raw.get("peer_versions")
    report.conditions = [tuple(c) for c in raw.get("conditions", [])]  # type: ignore[misc]
    failed = raw.get("failed", {})
    plot = None
    for name in FIGURES + EXTRA_FIGURES:
        if name in failed:
            report.rows.append(Row(name, "not measured", "-", "-", "-", "-", None, failed[name]))
        elif name == "throughput" and "throughput" in raw:
            throughput_rows(raw["throughput"], report)
        elif name == "beats" and "beats_phoenix" in raw:
            beats_rows(raw["beats_phoenix"], raw["beats_bare"], mode, quick, report)
            failed_at = raw["beats_phoenix"].get("failed")
            plot = plot_scaling(raw["beats_phoenix"]["points"], raw["beats_bare"]["points"], out / "scaling.png",
                                note=(f"Phoenix could not hold {failed_at['n']:,} children: {failed_at['kills']} "
                                      "healthy children killed on the way" if failed_at else ""))
        elif name == "hang" and "hang" in raw:
            hang_rows(raw["hang"], report)
            if "hang_large" in raw:
                hang_rows(raw["hang_large"], report)
            if "frozen_master" in raw:
                frozen_rows(raw["frozen_master"], report)
        elif name == "replace" and "replace_phoenix" in raw:
            replace_rows(raw["replace_phoenix"], raw["replace_gunicorn"], raw["imports"], report)
        elif name == "spawn" and "spawn" in raw:
            spawn_rows(raw["spawn"], report)
        elif name == "store" and "store" in raw:
            report.rows += store.rows(raw["store"], Row, ok)
            report.details += store_details(raw["store"])
        elif name == "jobspeed" and "jobspeed" in raw:
            report.rows += jobspeed.rows(raw["jobspeed"], Row, ok)
            report.details += jobspeed.details(raw["jobspeed"])
    if quick:
        report.notes.append("quick mode: smaller counts than the issue's (see the figure names); run "
                            "`python -m bench` for the full figures.")
    report.notes.append("This machine is shared with other work (see 'Conditions per figure'); contenders of one "
                        "figure run minutes apart, or alternated round by round, under the same conditions.")
    report.notes.append("Where the time goes for the missed targets: bench/PROFILE.md (`python -m bench --profile`).")
    return report, plot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, under 2 minutes")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"comma-separated subset of {','.join(FIGURES + EXTRA_FIGURES)} "
                             f"(default: all but {','.join(EXTRA_FIGURES)})")
    parser.add_argument("--no-rq", action="store_true", help="skip the RQ peer")
    parser.add_argument("--out", default=str(HERE), help="where RESULTS.md, results.json, scaling.png go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (state dirs, logs)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of measuring: profile the master with py-spy, write PROFILE.md")
    parser.add_argument("--render", action="store_true",
                        help="instead of measuring: rebuild RESULTS.md and scaling.png from results.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.profile:
        from bench import profile

        return profile.main(quick=args.quick, out=out)
    if args.render:
        raw = json.loads((out / "results.json").read_text())
        report, plot = build_report(raw, out)
        print_table(report)
        write_markdown(report, out / "RESULTS.md", plot)
        return 0
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - set(FIGURES + EXTRA_FIGURES)
    if unknown:
        parser.error(f"unknown figure(s) {sorted(unknown)}; choose from {', '.join(FIGURES + EXTRA_FIGURES)}")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="phxb-", dir="/tmp"))
    raw: dict[str, Any] = {
        "mode": mode_name, "params": mode, "started": time.time(), "load_start": loadavg(), "failed": {},
        "phoenix_code": code_identity(), "peer_versions": peer_versions(),
        "conditions": [],
        "command": "python -m bench" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:])),
    }
    reg = Registry()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    say(f"work directory {work}; mode {mode_name}; load {loadavg()}")
    say("peers: " + ", ".join(f"{k} {v}" for k, v in raw["peer_versions"].items()))

    def attempt(name: str, body: Any) -> None:
        """One figure; if it fails, say so in the table and go on with the others."""
        available = cpu_available()
        busy0, total0 = cpu_times()
        t_fig, load0 = time.monotonic(), loadavg()
        before = set(reg.procs)
        try:
            body()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - reported in the table
            import traceback

            traceback.print_exc()
            raw["failed"][name] = f"{type(exc).__name__}: {exc}"
            say(f"{name}: failed: {exc}")
        finally:
            for pid in list(reg.procs):  # nothing of this figure may linger into the next one
                if pid not in before:
                    reg.stop(pid, timeout=10)
            busy1, total1 = cpu_times()
            raw["conditions"].append((name, time.monotonic() - t_fig, (busy1 - busy0) / max(1, total1 - total0),
                                      load0, available))

    def do_throughput() -> None:
        raw["throughput"] = throughput.run(reg, work, mode["throughput_jobs"], mode["throughput_reps"],
                                           not args.no_rq, say)

    def do_beats() -> None:
        points = mode["scale_points"]
        raw["beats_phoenix"] = beats.run_phoenix(reg, work, points, mode["window"], mode["settle"],
                                                 mode["beat_figure_at"], say)
        reached = [p["n"] for p in raw["beats_phoenix"]["points"]] or points[:1]
        raw["beats_bare"] = beats.run_bare(reg, work, reached, mode["window"], mode["settle"],
                                           min(mode["beat_figure_at"], max(reached)), say)

    def do_hang() -> None:
        # At the kernel's own net.unix.max_dgram_qlen, never changed here, with 2 CPU hogs.
        raw["hang"] = hang.run(reg, work, mode["hang_children"], mode["hang_hung"], say)
        raw["hang_large"] = hang.run(reg, work, mode["hang_children_large"], mode["hang_hung"], say, "hang-large")
        raw["frozen_master"] = hang.frozen_master(reg, work, mode["frozen_children"], say)

    def do_replace() -> None:
        say("replacement: timing app import and `phoenix check`")
        raw["imports"] = replace.app_import_seconds()
        raw["replace_phoenix"], raw["replace_gunicorn"] = replace.run(
            reg, work, mode["replace_children"], mode["replace_rounds"], say)

    def do_spawn() -> None:
        raw["spawn"] = spawn.run(reg, work, mode["spawn_api"], mode["spawn_cli"], say)

    def do_store() -> None:
        raw["store"] = store.run(work, mode_name, say)

    def do_jobspeed() -> None:
        raw["jobspeed"] = jobspeed.run(reg, work, mode["jobspeed_rounds"], mode["jobspeed_seconds"], say)

    steps = {"throughput": do_throughput, "beats": do_beats, "hang": do_hang, "replace": do_replace,
             "spawn": do_spawn, "store": do_store, "jobspeed": do_jobspeed}
    try:
        for name in FIGURES + EXTRA_FIGURES:
            if name in only:
                attempt(name, steps[name])
    finally:
        left = reg.cleanup()
        if left:
            say(f"stopped {len(left)} leftover process(es) by pid: {left[:20]}")
        if args.keep:
            say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    raw["elapsed"] = time.monotonic() - t0
    raw["load_end"] = loadavg()
    keep_previous_figures(raw, out / "results.json", only)
    (out / "results.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    report, plot = build_report(raw, out)
    print_table(report)
    write_markdown(report, out / "RESULTS.md", plot)
    say(f"wrote {out / 'RESULTS.md'}" + (f" and {plot}" if plot else "") + f" in {report.elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
