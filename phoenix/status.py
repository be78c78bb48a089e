"""`phoenix status`: the journal's view of every job, joined with the live
view of the running master (pids, beat ages, progress, memory) when there is one."""

from __future__ import annotations

import sys
import time
from typing import Any

from phoenix import control, pidfile
from phoenix.journal import Journal, journal_present
from phoenix.paths import StatePaths
from phoenix.untrusted import visible

MASTER_FIELDS = ("pid", "generation", "state", "started_at", "uptime", "workers", "slots_used", "spare_pid", "app",
                 "beats", "beats_missing", "rejected", "reload")


def collect(paths: StatePaths) -> tuple[dict[str, Any], bool]:
    """(report, master running?) in the shape `phoenix status --json` prints."""
    live: dict[str, Any] | None = None
    if pidfile.live_master_pid(paths.pidfile, paths.lockfile) is not None:
        try:
            live = control.request(paths.control_socket, {"cmd": "status"}, timeout=5.0)
        except control.ControlError:
            live = None
    jobs: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    if journal_present(paths.journal):
        with Journal(paths.journal, create=False) as journal:
            jobs = list(journal.status_rows())
            meta = {name: journal.meta(name) for name in ("generation", "started_at")}
    running = (live or {}).get("running", {})
    for job in jobs:
        now = running.get(str(job["id"]))
        job["last_beat_age"] = now["last_beat_age"] if now else None
        if now:
            job.update(pid=now["pid"], age=now["age"], progress=now["progress"], rss=now["rss"])
    if live is not None:
        master = {k: live["master"][k] for k in MASTER_FIELDS if k in live["master"]}
    else:
        master = {"pid": None, "generation": meta.get("generation"), "state": "stopped",
                  "started_at": meta.get("started_at")}
    return {"master": master, "jobs": jobs}, live is not None


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _size(value: int | None) -> str:
    return "-" if value is None else f"{value / 1048576:.1f}M"


def summary(report: dict[str, Any]) -> tuple[str, list[str], list[tuple[str, ...]]]:
    """(heading, column names, rows of running jobs) for either rendering."""
    master = report["master"]
    counts = {"pending": 0, "running": 0, "finished": 0, "failed": 0}
    for job in report["jobs"]:
        counts[job["state"]] = counts.get(job["state"], 0) + 1
    if master["state"] == "stopped":
        head = f"master: stopped (last generation {master['generation'] or '-'})"
    else:
        head = (f"master: {master['state']}  pid {master['pid']}  generation {master['generation']}  "
                f"uptime {duration(master.get('uptime'))}  "
                f"slots {master.get('slots_used', '-')}/{master.get('workers', '-')}")
    head += "\n" + "  ".join(f"{state} {n}" for state, n in counts.items())
    columns = ["key", "pid", "attempt", "age", "last beat", "progress", "rss"]
    rows: list[tuple[str, ...]] = [
        (visible(job["key"]), str(job["pid"] or "-"), str(job["attempt"]), duration(job.get("age")),
         f"{job['last_beat_age']:.1f}s" if job["last_beat_age"] is not None else "-",
         str(job.get("progress", "-")), _size(job.get("rss")))
        for job in report["jobs"] if job["state"] == "running"
    ]
    return head, columns, rows


def rich_table(report: dict[str, Any]) -> Any:
    from rich.table import Table
    from rich.text import Text

    head, columns, rows = summary(report)
    # Text cells, not strings: rich would read a key like "[/bold]" or
    # "[link=...]" as markup. (Control characters are escaped by summary.)
    table = Table(title=Text(head), title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column != "key" else "left",
                         style="cyan" if column == "key" else None)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def render(report: dict[str, Any]) -> None:
    """A rich table on a terminal (rich honours NO_COLOR), plain columns when piped."""
    if sys.stdout.isatty():
        from rich.console import Console

        Console().print(rich_table(report))
        return
    head, columns, rows = summary(report)
    print(head)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    for row in [tuple(columns), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def watch(paths: StatePaths, interval: float) -> None:
    """Refresh the table in place until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live

    with Live(rich_table(collect(paths)[0]), console=Console(), auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(rich_table(collect(paths)[0]), refresh=True)
        except KeyboardInterrupt:
            pass
