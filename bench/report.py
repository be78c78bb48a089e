"""Turning measurements into the table of ratios: rows with targets, the
rich table on the terminal, bench/RESULTS.md, and the scaling plot."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import loadavg


@dataclass
class Row:
    figure: str
    phoenix: str  # the absolute figure, formatted
    peer: str  # the peer's name
    peer_value: str  # the peer's absolute figure
    ratio: str  # formatted ratio (or the figure against its target)
    target: str
    met: bool | None  # None: not measured / not applicable
    note: str = ""
    # Why the peer's own figure in this run cannot back the ratio (it is far
    # off the peer's calibration, run alone): then the row says so instead
    # of met / MISSED.
    suspect: str = ""


@dataclass
class Report:
    mode: str
    command: str
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # Markdown lines
    notes: list[str] = field(default_factory=list)
    # figure, seconds, machine busy, load average, CPU share a spinning probe got just before
    conditions: list[tuple[str, float, float, str, float]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    load_start: str = field(default_factory=loadavg)
    load_end: str = ""
    elapsed: float = 0.0
    code: str = ""
    versions: dict[str, str] | None = None  # peer_versions() at the run's start


def code_identity() -> str:
    """The Phoenix code measured: the last commit, and whether phoenix/ had
    uncommitted changes (recorded at the start of a run)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "phoenix"], capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        return "?"
    return head + (" + uncommitted changes in phoenix/" if dirty else "")


def peer_versions() -> dict[str, str]:
    """The version of every peer the benchmarks run (a peer's speed changes
    with its version: RQ 3.0.0's burst workers linger 60 s on redis-py 8.2,
    not on 8.1), as installed here."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"multiprocessing (CPython)": platform.python_version()}
    for name in ("rq", "redis", "gunicorn", "procrastinate", "pgqueuer"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        versions["redis-server"] = out.split()[2].removeprefix("v=")
    except (OSError, IndexError):
        versions["redis-server"] = "not installed"
    return versions


def machine(versions: dict[str, str] | None = None) -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        qlen = Path("/proc/sys/net/unix/max_dgram_qlen").read_text().strip()
    except OSError:
        qlen = "?"
    virt = []
    try:
        container = subprocess.run(["systemd-detect-virt", "--container"],
                                   capture_output=True, text=True).stdout.strip()
        if container and container != "none":
            virt.append(f"container: {container}")
    except OSError:
        pass
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith(("Hypervisor vendor:", "Virtualization type:")):
                virt.append(line.split(":", 1)[1].strip())
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "net.unix.max_dgram_qlen": qlen,
        "virtualisation": ", ".join(virt) or "none detected",
        "peers": ", ".join(f"{k} {v}" for k, v in (versions or peer_versions()).items()),
    }


def _mark(row: Row) -> str:
    if row.suspect:
        return "peer run suspect"
    return {True: "met", False: "MISSED", None: "n/a"}[row.met]


def print_table(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    # Wide enough for the table even when piped (rich would assume 80 columns).
    console = Console(width=None if sys.stdout.isatty() else 240)
    table = Table(title=f"Phoenix benchmarks ({report.mode} mode): ratios against peers run in the same command")
    for column in ("figure", "Phoenix", "peer", "peer value", "ratio", "target", "", "note"):
        table.add_column(column, overflow="fold")
    for r in report.rows:
        style = "bold yellow" if r.suspect else {True: "green", False: "bold red", None: "dim"}[r.met]
        note = "; ".join(x for x in (r.suspect, r.note) if x)
        table.add_row(r.figure, r.phoenix, r.peer, r.peer_value, r.ratio, r.target, f"[{style}]{_mark(r)}[/]", note)
    console.print(table)
    for note in report.notes:
        console.print(f"- {note}")


def write_markdown(report: Report, path: Path, plot: Path | None) -> None:
    m = machine(report.versions)
    lines = [
        "# Phoenix benchmark results",
        "",
        f"Command: `{report.command}` ({report.mode} mode), "
        f"run {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(report.started))}, "
        f"took {report.elapsed:.0f} s.",
        "",
        "Each figure is measured side by side with its peer in the same run; the ratio is the headline, absolute "
        "numbers are for reference and depend on the machine below.",
        "",
        "| figure | Phoenix | peer | peer value | ratio | target | result | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.rows:
        note = "; ".join(x for x in (r.suspect, r.note) if x)
        cells = [r.figure, r.phoenix, r.peer, r.peer_value, r.ratio, r.target, _mark(r), note]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Machine", "", f"- Phoenix code measured: {report.code or '?'}"]
    for k, v in m.items():
        lines.append(f"- {k}: {v}")
    lines.append(f"- load average (1, 5, 15 min) at start: {report.load_start}; at end: {report.load_end}")
    if report.conditions:
        lines += ["", "Conditions per figure. 'Probe' is the share of a core a spinning process got for 0.3 s just "
                  "before the figure started (100 % = a core was free; less = other work on the machine competed). "
                  "'Busy' is the whole machine's CPU use while the figure ran (both cores, from /proc/stat), the "
                  "benchmark's own processes included.",
                  "", "| figure | took (s) | probe: CPU share before | machine busy during | load average at start |",
                  "| --- | --- | --- | --- | --- |"]
        for name, took, busy, load, available in report.conditions:
            lines.append(f"| {name} | {took:.0f} | {available:.0%} | {busy:.0%} | {load} |")
    if plot is not None:
        lines += ["", "## Scaling", "", f"![per-beat master CPU against children]({plot.name})", ""]
    if report.details:
        lines += ["", "## Details", ""] + report.details
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    kept = ""  # a section another module writes (bench.durability) stays
    if path.exists() and _KEPT_FROM in (text := path.read_text()):
        kept = "\n\n" + _KEPT_FROM + text.split(_KEPT_FROM, 1)[1].rstrip()
    path.write_text("\n".join(lines).rstrip() + kept + "\n")


_KEPT_FROM = "<!-- bench.durability:"


def plot_scaling(phoenix_points: list[dict[str, Any]], bare_points: list[dict[str, Any]], path: Path,
                 target_factor: float = 1.3, note: str = "") -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    px = [p["n"] for p in phoenix_points]
    bx = [p["n"] for p in bare_points]
    left.plot(px, [p["us_per_beat"] for p in phoenix_points], "o-", label="Phoenix master")
    left.plot(bx, [p["us_per_beat"] for p in bare_points], "s--", label="bare recvmsg loop (SO_PASSCRED)")
    base = next((p["us_per_beat"] for p in phoenix_points if p["n"] == 100), None)
    if base is not None and not math.isnan(base):
        left.axhline(base * target_factor, color="grey", linestyle=":",
                     label=f"target: {target_factor}x Phoenix at 100")
    left.set_xlabel("children beating at 5 Hz")
    left.set_ylabel("receiver CPU per beat (us)")
    left.set_ylim(bottom=0)
    left.set_title("CPU per beat")
    left.legend(fontsize=8)
    right.plot(px, [100 * p["cpu_frac"] for p in phoenix_points], "o-", label="Phoenix master")
    right.plot(bx, [100 * p["cpu_frac"] for p in bare_points], "s--", label="bare recvmsg loop")
    right.axhline(10, color="grey", linestyle=":", label="target at 1,000: 10 % of a core")
    right.set_xlabel("children beating at 5 Hz")
    right.set_ylabel("% of one core")
    right.set_ylim(bottom=0)
    right.set_title("receiver CPU in all")
    right.legend(fontsize=8)
    if note:
        fig.suptitle(note, fontsize=9, color="darkred")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
