"""`phoenix jobs` and `phoenix show`: the journal's jobs and attempts for an
operator. Every string from a job (key, target, reason, traceback) goes
through `visible`, and into rich as Text, never as markup."""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from typing import Any, Sequence

from phoenix.cli.status import as_is, kib, number, since
from phoenix.errors import UsageError
from phoenix.linux.untrusted import stored_json, visible
from phoenix.store.base import Store
from phoenix.wire.heartbeat import progress_view

JOBS_COLUMNS = ("key", "target", "state", "attempts", "last outcome", "age")


class BadCursor(UsageError, ValueError):
    """--after is not a cursor that `phoenix jobs` printed."""


def parse_cursor(text: str) -> tuple[float, int]:
    """A page's `next_after`, "UPDATED_AT/ID", back into (updated_at, id)."""
    when, _slash, job_id = text.partition("/")
    try:
        cursor = float(when), int(job_id)
        # A job id is a 64-bit integer in both stores, a time a finite number: else no page could follow.
        if not math.isfinite(cursor[0]) or not 0 <= cursor[1] < 2**63:
            raise ValueError
        return cursor
    except ValueError:
        raise BadCursor(f"--after wants the next_after of the page before, as `phoenix jobs --json` prints it "
                        f"(e.g. 1765080000.123/42), not {text!r}") from None


def jobs_report(journal: Store, *, state: str | None, target: str | None, since: float | None,
                limit: int, after: tuple[float, int] | None = None, key_prefix: str | None = None,
                batch_id: int | None = None) -> dict[str, Any]:
    """The `phoenix jobs --json` object: the jobs shown, how many matched from
    this page on ("total") and after it ("more"), and `next_after`, the cursor
    of the next page (None on the last). Pages go by last change, newest first:
    a job that changes while a script pages moves to the front."""
    rows, total = journal.list_jobs(state=state, target=target,
                                    since=None if since is None else time.time() - since, limit=limit, after=after,
                                    key_prefix=key_prefix, batch_id=batch_id)
    more = max(0, total - len(rows))
    next_after = f"{rows[-1]['updated_at']!r}/{rows[-1]['id']}" if more and rows else None
    return {"jobs": rows, "total": total, "more": more, "next_after": next_after}


def _last_outcome(job: dict[str, Any]) -> str:
    if not job["outcome"]:
        return "-"
    return f"{job['outcome']}: {job['reason']}" if job.get("reason") else str(job["outcome"])


def render_jobs(report: dict[str, Any]) -> None:
    now = time.time()
    rows = [(visible(job["key"]), visible(job["target"]), visible(str(job["state"])), visible(str(job["attempts"])),
             visible(_last_outcome(job)), since(now, job["updated_at"])) for job in report["jobs"]]
    _table(JOBS_COLUMNS, rows)
    if report["more"]:
        print(f"... {report['more']} more (of {report['total']}): narrow with --state, --target, --since, "
              f"raise --limit, or see the next page with --after {report['next_after']}")


def show_report(journal: Store, job: dict[str, Any]) -> dict[str, Any]:
    """The `phoenix show --json` object: the job and every attempt."""
    node = socket.gethostname()  # the SQLite journal's attempts all ran here; a shared store names each's master
    attempts = []
    for attempt in journal.attempts_of(job["id"]):
        started, ended = number(attempt["started_at"]), number(attempt["ended_at"])
        attempts.append({**attempt, "node": attempt.pop("master", node),
                         # None: running, or a time another tool damaged (shown as it is)
                         "duration": None if started is None or ended is None else round(ended - started, 3),
                         "progress": progress_view(attempt.get("progress"))})
    result = job["result"]
    return {"id": job["id"], "key": job["key"], "target": job["target"], "params": stored_json(job["params"]),
            "state": job["state"], "attempts": job["attempts"], "failures": job["failures"],
            "outcome": job["outcome"], "result": None if result is None else stored_json(result),
            "error": job["error"], "created_at": job["created_at"], "updated_at": job["updated_at"],
            # (a store before version 3 has none of these)
            "priority": job.get("priority", 0), "run_at": job.get("run_at"), "tick": job.get("tick"),
            # The latest attempt's phoenix.progress(); the job's last phoenix.checkpoint() (None: none saved).
            "progress": attempts[-1]["progress"] if attempts else None,
            "checkpoint": None if job.get("checkpoint") is None else stored_json(job["checkpoint"]),
            "checkpoint_at": job.get("checkpoint_at"),
            "attempt_list": attempts}


def _clock(at: float | None) -> str:
    if at is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    except (OverflowError, ValueError, OSError, TypeError):  # a stored time no date can show: shown as it is
        return f"{visible(repr(at))[:40]} (not a date)"


def render_show(report: dict[str, Any]) -> None:
    print(f"job {visible(report['key'])}  (id {report['id']})")
    for name in ("target", "state", "attempts", "failures", "outcome"):
        print(f"  {name}: {visible(str(report[name] if report[name] is not None else '-'))}")
    print(f"  params: {visible(json.dumps(report['params']))}")
    print(f"  created: {_clock(report['created_at'])}  last change: {_clock(report['updated_at'])}")
    if report["run_at"] is not None or report["priority"]:
        due = f"due: {_clock(report['run_at'])}  " if report["run_at"] is not None else ""
        print(f"  {due}priority: {visible(str(report['priority']))}"
              + ("  (a periodic tick)" if report["tick"] is not None else ""))
    if report["result"] is not None:
        print(f"  result: {visible(json.dumps(report['result']))}")
    if report["progress"] is not None:
        shown = report["progress"]
        print(f"  progress: {visible(str(shown['done']))}"
              + (f" of {visible(str(shown['total']))}" if shown["total"] is not None else "")
              + (f"  {visible(str(shown['note']))}" if shown["note"] else ""))
    if report["checkpoint"] is not None:
        saved = visible(json.dumps(report["checkpoint"]))[:200]
        print(f"  checkpoint: {saved}  (saved {_clock(report['checkpoint_at'])})")
    columns = ("attempt", "pid", "node", "start", "duration", "outcome", "reason", "max rss")
    rows = [(visible(str(a["n"])), visible(str(a["pid"] or "-")), visible(a["node"]), _clock(a["started_at"]),
             _attempt_duration(a), visible(str(a["outcome"] or "-")), visible(str(a["reason"] or "-")),
             kib(a["max_rss_kb"]))
            for a in report["attempt_list"]]
    print()
    if rows:
        _table(columns, rows)
    else:
        print("no attempt yet")
    for attempt in report["attempt_list"]:
        if attempt["error"]:
            print(f"\nattempt {attempt['n']} error:\n{visible(str(attempt['error']).rstrip(), multiline=True)}")
    if report["error"] and not report["attempt_list"]:
        print(f"\nerror:\n{visible(str(report['error']).rstrip(), multiline=True)}")


def _attempt_duration(attempt: dict[str, Any]) -> str:
    if attempt["duration"] is not None:
        return f"{attempt['duration']:.2f}s"
    return "running" if attempt["ended_at"] is None else f"? (ended {as_is(attempt['ended_at'])})"


def _table(columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """A rich table on a terminal (rich honours NO_COLOR), plain columns when piped."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table()
        for column in columns:
            table.add_column(column, style="cyan" if column == "key" else None)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))  # Text: a key like "[/bold]" is not markup
        Console().print(table)
        return
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    for row in [columns, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
