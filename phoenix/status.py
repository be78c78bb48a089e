"""`phoenix status`: the journal's view of every job, joined with the live
view of the running master (pids, beat ages, progress, memory) when there is one."""

from __future__ import annotations

import sys
import time
from typing import Any

from phoenix import control, pidfile, quarantine
from phoenix.journal import Journal, journal_present
from phoenix.paths import StatePaths
from phoenix.untrusted import visible

MASTER_FIELDS = ("pid", "generation", "state", "started_at", "uptime", "workers", "slots_used", "spare_pid",
                 "fork_server_pid", "app",
                 "beats", "beats_missing", "rejected", "reload", "degraded_reason")


RECENT_FAILURES = 5


class NoJournal(Exception):
    """Nothing has run with this state directory: no journal, no master."""


def collect(paths: StatePaths) -> tuple[dict[str, Any], bool]:
    """(report, master running?) in the shape `phoenix status --json` prints.
    Raises NoJournal, creating nothing, when there is neither."""
    live: dict[str, Any] | None = None
    if pidfile.live_master_pid(paths.pidfile, paths.lockfile) is not None:
        try:
            live = control.request(paths.control_socket, {"cmd": "status"}, timeout=5.0)
        except control.ControlError:
            live = None
    jobs: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    counts: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    first_start = last_reload = None
    if journal_present(paths.journal):
        with Journal(paths.journal, create=False) as journal:
            jobs = list(journal.status_rows())
            meta = {name: journal.meta(name) for name in ("generation", "started_at")}
            counts = journal.counts()
            failures = journal.recent_failures(RECENT_FAILURES)
            first_start, last_reload = journal.master_times()
    elif live is None:
        raise NoJournal(f"no journal in {paths.root}: nothing has run here")
    running = (live or {}).get("running", {})
    for job in jobs:
        now = running.get(str(job["id"]))
        job["last_beat_age"] = now["last_beat_age"] if now else None
        if now:
            job.update(pid=now["pid"], age=now["age"], progress=now["progress"], rss=now["rss"])
    if live is not None:
        master = {k: live["master"][k] for k in MASTER_FIELDS if k in live["master"]}
        wall = time.time()
        # Since the first start of this master (replacements keep it going), and since its last replacement.
        master["first_started_at"] = first_start
        master["uptime_total"] = round(wall - first_start, 3) if first_start else master.get("uptime")
        master["reloaded_at"] = last_reload
        master["since_reload"] = round(wall - last_reload, 3) if last_reload else None
    else:
        master = {"pid": None, "generation": meta.get("generation"), "state": "stopped",
                  "started_at": meta.get("started_at")}
    report = {"master": master, "counts": counts, "recent_failures": failures, "jobs": jobs,
              "quarantined": len(quarantine.names(paths.root))}
    return report, live is not None


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
    counts = report.get("counts") or {}
    if master["state"] == "stopped":
        head = f"master: stopped (last generation {master['generation'] or '-'})"
    else:
        since_reload = master.get("since_reload")
        reloaded = f" (last reload {duration(since_reload)} ago)" if since_reload is not None else ""
        head = (f"master: {master['state']}  pid {master['pid']}  generation {master['generation']}  "
                f"up {duration(master.get('uptime_total'))}{reloaded}  "
                f"slots {master.get('slots_used', '-')}/{master.get('workers', '-')}")
        if master.get("degraded_reason"):  # it starts nothing until a reload loads good code: say why
            reason = visible(str(master["degraded_reason"]).strip().splitlines()[0])
            head += f"\ndegraded: the code could not be loaded: {reason}; fix it and reload (USR2)"
    head += "\njobs: " + "  ".join(f"{state} {n}" for state, n in counts.items())
    if report.get("quarantined"):
        head += (f"\nquarantine: {report['quarantined']} record(s) the master could not process were put aside: "
                 "see phoenix quarantine")
    failures = report.get("recent_failures") or []
    if failures:
        head += "\nlast failures:"
        for failure in failures:
            head += "\n  " + failure_line(failure)
    columns = ["key", "pid", "attempt", "age", "last beat", "progress", "rss"]
    rows: list[tuple[str, ...]] = [
        (visible(job["key"]), str(job["pid"] or "-"), str(job["attempt"]), duration(job.get("age")),
         f"{job['last_beat_age']:.1f}s" if job["last_beat_age"] is not None else "-",
         str(job.get("progress", "-")), _size(job.get("rss")))
        for job in report["jobs"] if job["state"] == "running"
    ]
    return head, columns, rows


def failure_line(failure: dict[str, Any]) -> str:
    """One line per failed job: when, key, outcome and why (the error's last
    line: a traceback's exception), peak memory. All of it escaped: it comes from jobs."""
    when = time.strftime("%m-%d %H:%M:%S", time.localtime(failure["failed_at"]))
    error = (failure["error"] or "").rstrip().rpartition("\n")[2].strip()
    reason = failure["reason"] or ""
    why = f"{reason}: {error}" if reason and error and reason not in error else error or reason
    memory = f"  max RSS {failure['max_rss_kb'] / 1024:.1f}M" if failure["max_rss_kb"] else ""
    return visible(f"{when}  {failure['key']}  {failure['outcome']}: {why or '-'}{memory}")[:300]


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


def collect_shared(url: str, node: str | None = None) -> tuple[dict[str, Any], bool]:
    """(report, any master holding a live lease?) of a shared store: every
    master's lease and slots, and every job with the node that runs it (or
    ran it last); `node` keeps that master and its jobs only."""
    from phoenix.pgstore import PgStore

    with PgStore(url) as store:
        masters = [m for m in store.masters() if node is None or m["node"] == node]
        jobs = list(store.status_rows(node))
        counts = store.counts()
        failures = store.recent_failures(RECENT_FAILURES)
    shown = []
    for master in masters:
        expires_in = float(master["lease_expires_in"])
        shown.append({
            "node": master["node"], "pid": master["pid"], "generation": master["generation"],
            "epoch": master["epoch"], "state": master["state"] if expires_in > 0 else f"{master['state']} (expired)",
            "lease_expires_in": round(expires_in, 3), "slots_used": master["slots_used"],
            "slots": master["slots"], "app": master["app"],
        })
    live = any(m["lease_expires_in"] > 0 and m["state"] in ("running", "draining", "degraded") for m in shown)
    return {"masters": shown, "jobs": jobs, "counts": counts, "recent_failures": failures}, live


def render_shared(report: dict[str, Any]) -> None:
    """Plain columns: one line per master, then the running jobs."""
    print("masters:")
    for m in report["masters"]:
        print(f"  {visible(m['node'])}  pid {m['pid']}  gen {m['generation']}  {m['state']}  "
              f"lease {m['lease_expires_in']:+.1f}s  slots {m['slots_used']}/{m['slots']}")
    print("jobs: " + "  ".join(f"{state} {n}" for state, n in report["counts"].items()))
    for job in report["jobs"]:
        if job["state"] == "running":
            where = visible(job["node"] or "-")
            print(f"  {visible(job['key'])}  attempt {job['attempt']}  pid {job['pid']}  on {where}")
    for failure in report["recent_failures"]:
        print("  " + failure_line(failure))
