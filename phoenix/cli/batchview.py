"""`phoenix batches` and `phoenix jobs --batch NAME`: a batch's state and
counts, and its jobs, for an operator (store/batches.py keeps them)."""

from __future__ import annotations

import time
from typing import Any

from phoenix.cli.jobsview import _table, jobs_report
from phoenix.cli.status import since
from phoenix.linux.untrusted import visible
from phoenix.store.base import Store
from phoenix.store.batches import unknown_refusal

BATCHES_COLUMNS = ("batch", "state", "jobs", "remaining", "counts", "age")


def batches_report(journal: Store, limit: int) -> dict[str, Any]:
    """The `phoenix batches --json` object: the newest `limit` batches, and
    whether there are more (one more is read to know)."""
    shown = journal.batches(limit=limit + 1)
    return {"batches": shown[:limit], "more": len(shown) > limit}


def render_batches(report: dict[str, Any]) -> None:
    now = time.time()
    rows = [(visible(b["name"]), visible(str(b["state"])), visible(str(b["jobs"])), visible(str(b["remaining"])),
             visible(" ".join(f"{state}={n}" for state, n in sorted(b["counts"].items()))) or "-",
             since(now, b["created_at"])) for b in report["batches"]]
    if not rows:
        print("no batches (submit into one with `phoenix submit ... --batch NAME` or Client(...).batch(NAME))")
        return
    _table(BATCHES_COLUMNS, rows)
    if report["more"]:
        print(f"(the newest {len(rows)} shown: --limit N shows more)")


def batch_jobs_report(journal: Store, name: str, *, state: str | None, target: str | None, since: float | None,
                      limit: int, after: tuple[float, int] | None = None) -> dict[str, Any]:
    """As `jobs_report`, for the jobs of one batch (BatchRefused if there is
    no such batch): last changed first, a page at a time."""
    found = journal.batches(name=name)
    if not found:
        raise unknown_refusal(name)
    # A page read in the store, as `phoenix jobs` reads one: never the whole batch.
    report = jobs_report(journal, state=state, target=target, since=since, limit=limit, after=after,
                         batch_id=found[0]["id"])
    return {"batch": found[0]["name"], **report}
