"""`phoenix status`: the journal's view of every job, joined with the live
view of the running master (pids, beat ages) when there is one."""

from __future__ import annotations

import sys
from typing import Any

from phoenix import control, pidfile
from phoenix.journal import Journal
from phoenix.paths import StatePaths


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
    if paths.journal.exists():
        journal = Journal(paths.journal)
        try:
            jobs = list(journal.status_rows())
            meta = {name: journal.meta(name) for name in ("generation", "master_pid", "started_at")}
        finally:
            journal.close()
    running = (live or {}).get("running", {})
    for job in jobs:
        now = running.get(str(job["id"]))
        job["last_beat_age"] = now["last_beat_age"] if now else None
        if now:
            job["pid"] = now["pid"]
    if live is not None:
        master = {k: live["master"][k] for k in ("pid", "generation", "state", "started_at")}
        extra = {k: live["master"][k] for k in ("workers", "app", "beats", "rejected") if k in live["master"]}
        master.update(extra)
    else:
        master = {"pid": None, "generation": meta.get("generation"), "state": "stopped",
                  "started_at": meta.get("started_at")}
    report = {"master": master, "jobs": jobs}
    return report, live is not None


def render(report: dict[str, Any]) -> None:
    """A table on a terminal (rich), plain columns when piped; NO_COLOR respected by rich."""
    master = report["master"]
    jobs = report["jobs"]
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["state"]] = counts.get(job["state"], 0) + 1
    head = (f"master: {master['state']}  pid {master['pid'] or '-'}  generation {master['generation'] or '-'}  "
            + "  ".join(f"{state} {counts.get(state, 0)}" for state in ("pending", "running", "finished", "failed")))
    columns = ("id", "key", "state", "attempt", "pid", "last beat", "outcome")
    rows = [
        (str(j["id"]), j["key"], j["state"], str(j["attempt"]), str(j["pid"] or "-"),
         f"{j['last_beat_age']:.1f}s" if j["last_beat_age"] is not None else "-", j["outcome"] or "-")
        for j in jobs
    ]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=head)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    print(head)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    for row in [columns, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
