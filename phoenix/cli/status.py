"""`phoenix status`: the journal's view of every job, joined with the live
view of the running master (pids, beat ages, progress, memory) when there is one."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Iterator

from phoenix.errors import StateError
from phoenix.linux import pidfile, procfs
from phoenix.linux.paths import StatePaths
from phoenix.linux.untrusted import is_number, visible
from phoenix.store import quarantine
from phoenix.store.base import SQLITE, JobState, SharedStore
from phoenix.store.open import open_store
from phoenix.store.sqlite import journal_present
from phoenix.wire import control
from phoenix.wire import heartbeat as protocol

MASTER_FIELDS = ("pid", "generation", "state", "started_at", "uptime", "workers", "slots_used", "spare_pid",
                 "fork_server_pid", "app",
                 "beats", "beats_missing", "rejected", "reload", "degraded_reason", "memory_limits")


RECENT_FAILURES = 5
JSON_PAGE = 1000  # jobs per `status --json` page unless --limit says otherwise
NOT_RESPONDING = "not responding"  # alive (holds the lock) but silent: exit 4 (EXIT_NOT_RESPONDING in cli.py)
ANSWER_WITHIN = 5.0  # seconds a running master has to answer a status request
# A control socket removed under a master is bound again at its next check of
# the state directory (master.STATE_DIR_CHECK, one second): wait that long, and some.
SOCKET_REBUILT_WITHIN = 2.5
# /proc/PID/stat states in which a process runs no code of its own until continued.
FROZEN_STATES = frozenset({"T", "t"})
PROCESS_STATES = {"R": "running", "S": "sleeping", "D": "waiting on the disk or the kernel", "T": "stopped",
                  "t": "stopped by a debugger", "Z": "zombie", "X": "dead"}


def page_of(rows: Iterator[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """(up to `limit` jobs, the cursor for the next page: the last job's id, or
    None if no job follows). `rows` holds one job more than a page, if there is one."""
    jobs = list(rows)
    more = len(jobs) > limit
    del jobs[limit:]
    return jobs, jobs[-1]["id"] if more else None


class NoJournal(StateError):
    """Nothing has run with this state directory: no journal, no master."""


def collect(paths: StatePaths, page: tuple[int, int] | None = None) -> tuple[dict[str, Any], bool]:
    """(report, master running?) in the shape `phoenix status --json` prints.
    Raises NoJournal, creating nothing, when there is neither. Its jobs: the
    running ones (what the table shows), or with `page` (after id, limit)
    that page of every job in id order, and `next_after` the next page's
    cursor. Never every job: the counts are the journal's kept counts."""
    live, silent = ask_master(paths)
    jobs: list[dict[str, Any]] = []
    next_after: int | None = None
    meta: dict[str, Any] = {}
    counts: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    first_start = last_reload = None
    if journal_present(paths.journal):
        with open_store(SQLITE, paths.journal, create=False) as journal:
            if page is None:
                jobs = list(journal.status_rows(state=JobState.RUNNING))
            else:
                jobs, next_after = page_of(journal.status_rows(after=page[0], limit=page[1] + 1), page[1])
            meta = {name: journal.meta(name) for name in ("generation", "started_at")}
            counts = journal.counts()
            failures = journal.recent_failures(RECENT_FAILURES)
            first_start, last_reload = journal.master_times()
    elif live is None and silent is None:
        raise NoJournal(f"no journal in {paths.root}: nothing has run here")
    running = _running(live)
    for job in jobs:
        now = running.get(str(job["id"]))
        job["last_beat_age"] = now.get("last_beat_age") if now else None
        # The journal's (written every PROGRESS_WRITE_EVERY), or the master's latest.
        job["progress"] = protocol.progress_view(job.get("progress"))
        if now:
            job.update(pid=now.get("pid"), age=now.get("age"), heartbeats=now.get("heartbeats"),
                       rss=now.get("rss"))
            job["progress"] = protocol.progress_view(now.get("progress")) or job["progress"]
    if live is not None:
        live_master = _checked(control.reply_field(live, "master", dict), _MASTER_KINDS, "master")
        master = {k: live_master[k] for k in MASTER_FIELDS if k in live_master}
        wall = time.time()
        # Since the first start of this master (replacements keep it going), and since its last replacement.
        master["first_started_at"] = first_start
        master["uptime_total"] = round(wall - first_start, 3) if first_start else master.get("uptime")
        master["reloaded_at"] = last_reload
        master["since_reload"] = round(wall - last_reload, 3) if last_reload else None
    elif silent is not None:
        master = {**silent, "generation": meta.get("generation"), "started_at": meta.get("started_at")}
    else:
        master = {"pid": None, "generation": meta.get("generation"), "state": "stopped",
                  "started_at": meta.get("started_at")}
    report: dict[str, Any] = {"master": master, "counts": counts, "recent_failures": failures, "jobs": jobs,
                              "quarantined": len(quarantine.names(paths.root))}
    if page is not None:
        report["next_after"] = next_after
    return report, live is not None


def ask_master(paths: StatePaths) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the master's live status, None) when it answers; (None, what is known
    of it) when a master holds the lock but does not answer; (None, None) when
    no master runs. A master that holds the lock is alive whatever its socket
    says: stopped (SIGSTOP, a paused VM) it cannot answer, and a control
    socket removed under it is back within a second (statefiles.py)."""
    deadline = time.monotonic() + SOCKET_REBUILT_WITHIN
    while True:
        pid = pidfile.live_master_pid(paths.pidfile, paths.lockfile)
        if pid is None and not pidfile.lock_held(paths.lockfile):
            return None, None  # no master (or it ended while we asked)
        # (pid None, lock held: the pidfile was removed under the master, which writes it again)
        process_state = procfs.state(pid) if pid is not None else None
        if process_state in FROZEN_STATES:
            return None, not_responding(pid, process_state, "it is stopped and cannot answer until it is continued")
        try:
            return control.request(paths.control_socket, {"cmd": "status"}, timeout=ANSWER_WITHIN), None
        except (control.ForeignServer, control.MalformedReply):
            raise  # not "stopped": something else answers there, which the operator must hear of
        except control.ControlError as exc:
            if time.monotonic() >= deadline:
                return None, not_responding(pid, process_state, str(exc))
        time.sleep(0.05)  # the socket (or the pidfile) is being put back, or the master is between two images


def not_responding(pid: int | None, process_state: str | None, why: str) -> dict[str, Any]:
    """The master part of the report for a master that is alive (it holds the lock) but does not answer."""
    state_name = PROCESS_STATES.get(process_state or "", "unknown")
    return {"pid": pid, "state": NOT_RESPONDING, "process_state": process_state, "process_state_name": state_name,
            "error": why}


_NUMBER = (int, float)
# The live reply's fields that the report computes with or formats, and their
# types: a reply of another shape (an impostor, another version) is an error
# line (control.MalformedReply), never a traceback.
_MASTER_KINDS: dict[str, tuple[type[Any], ...]] = {
    "pid": (int,), "generation": (int,), "state": (str,), "uptime": _NUMBER}
_CHILD_KINDS: dict[str, tuple[type[Any], ...]] = {
    "pid": (int, type(None)), "age": _NUMBER, "last_beat_age": _NUMBER, "rss": (int, type(None))}


def _malformed(what: str) -> control.MalformedReply:
    return control.MalformedReply(f"the master's status reply has no valid {what} (is the control socket a "
                                  "Phoenix master's of this version?)")


def _checked(values: dict[str, Any], kinds: dict[str, tuple[type[Any], ...]], what: str) -> dict[str, Any]:
    for name, kind in kinds.items():
        value = values.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _malformed(f"{what} {name!r}")
    return values


def _running(live: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The live reply's running children by job id."""
    if live is None:
        return {}
    running = live.get("running", {})
    if not isinstance(running, dict) or not all(isinstance(child, dict) for child in running.values()):
        raise _malformed("'running'")
    return {job: _checked(child, _CHILD_KINDS, "running child") for job, child in running.items()}


def number(value: Any) -> float | None:
    """A number read from a store, or None if it is none: NULL, or text or
    bytes another tool put in a numeric column (SQLite keeps what it is given)."""
    if not is_number(value) or not math.isfinite(value):
        return None
    return float(value)


def as_is(value: Any) -> str:
    """A stored value shown as it is, escaped and cut short: what a reader
    shows of one it cannot format (a number column holding text or bytes)."""
    return visible(str(value))[:40]


def formatted(value: Any, form: Callable[[float], str]) -> str:
    """A number from a store through `form` (a duration, a clock time, a size),
    "-" for NULL, and anything else as it is: a reader never fails on a damaged row."""
    if value is None:
        return "-"
    found = number(value)
    try:
        return as_is(value) if found is None else form(found)
    except (OverflowError, ValueError, OSError):  # a number no date or size can show (1e300 seconds)
        return as_is(value)


def since(now: float, at: Any) -> str:
    """How long ago `at` (a stored time) was, or the value as it is."""
    return formatted(at, lambda then: duration(now - then))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if number(seconds) is None:
        return as_is(seconds)
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _size(value: int | None) -> str:
    return formatted(value, lambda size: f"{size / 1048576:.1f}M")


def kib(value: Any) -> str:
    """A size in KiB from a store (max_rss_kb), in MiB."""
    return formatted(value, lambda size: f"{size / 1024:.1f}M")


def summary(report: dict[str, Any]) -> tuple[str, list[str], list[tuple[str, ...]]]:
    """(heading, column names, rows of running jobs) for either rendering."""
    master = report["master"]
    counts = report.get("counts") or {}
    if master["state"] == "stopped":
        head = f"master: stopped (last generation {master['generation'] or '-'})"
    elif master["state"] == NOT_RESPONDING:
        process = f"{master['process_state']} ({master['process_state_name']})" if master["process_state"] else "-"
        head = (f"master: {NOT_RESPONDING}  pid {master['pid'] or '-'}  process state {process}  "
                f"generation {master['generation'] or '-'}\n"
                f"it is alive and holds the lock (no other master can start here) but did not answer: "
                f"{visible(master['error'])}")
        if master["process_state"] in FROZEN_STATES:
            head += f"\nto resume it: kill -CONT {master['pid']}"
    else:
        since_reload = master.get("since_reload")
        reloaded = f" (last reload {duration(since_reload)} ago)" if since_reload is not None else ""
        head = (f"master: {master['state']}  pid {master['pid']}  generation {master['generation']}  "
                f"up {duration(master.get('uptime_total'))}{reloaded}  "
                f"slots {master.get('slots_used', '-')}/{master.get('workers', '-')}")
        if master.get("degraded_reason"):  # it starts nothing until a reload loads good code: say why
            reason = visible(str(master["degraded_reason"]).strip().splitlines()[0])
            head += f"\ndegraded: the code could not be loaded: {reason}; fix it and reload (USR2)"
        if master.get("memory_limits") not in (None, "none"):  # what enforces max_memory, once a job has one
            head += f"\nmemory limits: {visible(str(master['memory_limits']))}"
    head += "\njobs: " + counts_line(counts)
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
        (visible(job["key"]), visible(str(job["pid"] or "-")), visible(str(job["attempt"])), duration(job.get("age")),
         f"{job['last_beat_age']:.1f}s" if job["last_beat_age"] is not None else "-",
         progress_cell(job), _size(job.get("rss")))
        for job in report["jobs"] if job["state"] == JobState.RUNNING
    ]
    return head, columns, rows


def progress_cell(job: dict[str, Any]) -> str:
    """done/total and the note, as phoenix.progress() said; else the count of phoenix.heartbeat() calls."""
    shown = job.get("progress")
    if not shown:
        return str(job.get("heartbeats", "-"))
    done = formatted(shown["done"], lambda n: f"{n:g}") + (
        f"/{formatted(shown['total'], lambda n: f'{n:g}')}" if shown["total"] is not None else "")
    return done + (f" {visible(str(shown['note']))}" if shown["note"] else "")


def failure_line(failure: dict[str, Any]) -> str:
    """One line per failed job: when, key, outcome and why (the error's last
    line: a traceback's exception), peak memory. All of it escaped: it comes from jobs."""
    when = formatted(failure["failed_at"], lambda at: time.strftime("%m-%d %H:%M:%S", time.localtime(at)))
    error = str(failure["error"] or "").rstrip().rpartition("\n")[2].strip()
    reason = str(failure["reason"] or "")
    why = f"{reason}: {error}" if reason and error and reason not in error else error or reason
    memory = f"  max RSS {kib(failure['max_rss_kb'])}" if failure["max_rss_kb"] else ""
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
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = [head] + ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                      for row in [tuple(columns), *rows]]
    print("\n".join(lines))  # one write, not one per running child


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


def collect_shared(url: str, node: str | None = None,
                   page: tuple[int, int] | None = None) -> tuple[dict[str, Any], bool]:
    """(report, any master holding a live lease?) of a shared store: every
    master's lease and slots, and the running jobs with the node that runs
    them, or with `page` (after id, limit) that page of every job with the
    node that runs it (or ran it last), and `next_after`; `node` keeps that
    master and its jobs only."""
    next_after: int | None = None
    with open_store(url, reads_only=True) as store:  # a look: a weak synchronous_commit does not refuse it
        assert isinstance(store, SharedStore)  # a URL names a shared store
        masters = [m for m in store.masters() if node is None or m["node"] == node]
        if page is None:
            jobs = list(store.status_rows(node, state=JobState.RUNNING))
        else:
            jobs, next_after = page_of(store.status_rows(node, after=page[0], limit=page[1] + 1), page[1])
        counts = store.counts()
        failures = store.recent_failures(RECENT_FAILURES)
    for job in jobs:
        job["progress"] = protocol.progress_view(job.get("progress"))
    shown = []
    for master in masters:
        expires_in = float(master["lease_expires_in"])
        shown.append({
            "node": master["node"], "pid": master["pid"], "generation": master["generation"],
            "epoch": master["epoch"], "state": master["state"] if expires_in > 0 else f"{master['state']} (expired)",
            "lease_expires_in": round(expires_in, 3), "slots_used": master["slots_used"],
            "slots": master["slots"], "app": master["app"],
            "outage_budget": master["outage_budget"],  # seconds without the database that cost nothing
            "degraded_reason": master["degraded_reason"] if master["state"] == "degraded" else None,
        })
    live = any(m["lease_expires_in"] > 0 and m["state"] in ("running", "draining", "degraded") for m in shown)
    report: dict[str, Any] = {"masters": shown, "jobs": jobs, "counts": counts, "recent_failures": failures}
    if page is not None:
        report["next_after"] = next_after
    return report, live


def counts_line(counts: dict[str, int]) -> str:
    """The jobs of each state; `scheduled` (delayed jobs not due yet) only when there are some."""
    return "  ".join(f"{state} {n}" for state, n in counts.items() if n or state != "scheduled")


def render_shared(report: dict[str, Any]) -> None:
    """Plain columns: one line per master, then the running jobs."""
    print("masters:")
    for m in report["masters"]:
        print(f"  {visible(m['node'])}  pid {m['pid']}  gen {m['generation']}  {m['state']}  "
              f"lease {m['lease_expires_in']:+.1f}s  slots {m['slots_used']}/{m['slots']}"
              + (f"  outage budget {m['outage_budget']:.1f}s" if m.get("outage_budget") is not None else ""))
    print("jobs: " + counts_line(report["counts"]))
    for job in report["jobs"]:
        if job["state"] == JobState.RUNNING:
            where = visible(job["node"] or "-")
            print(f"  {visible(job['key'])}  attempt {job['attempt']}  pid {job['pid']}  on {where}"
                  + (f"  progress {progress_cell(job)}" if job["progress"] else ""))
    for failure in report["recent_failures"]:
        print("  " + failure_line(failure))
