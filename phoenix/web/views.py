"""What each dashboard page shows, as the JSON its API route answers: read
from the store only (never the master's control socket, so a busy browser
never costs the master's loop a turn), each read of jobs bounded by a page
size (the timeline reads the master events `phoenix prune` keeps: a few per
deploy).

No web library here: the server (server.py) turns these dicts into JSON and
into pages; the tests read them in-process too."""

from __future__ import annotations

import math
import socket
from typing import Any

from phoenix.cli.jobsview import jobs_report, show_report
from phoenix.cli.status import FROZEN_STATES, NOT_RESPONDING, collect_shared, number
from phoenix.errors import UsageError
from phoenix.linux import pidfile, procfs
from phoenix.linux.paths import StatePaths
from phoenix.store.base import JOB_STATES, Store

JOBS_PAGE = 50  # rows of the jobs page unless ?limit= says otherwise
MAX_PAGE = 500  # the most rows one request reads (?limit= above it is refused)
FAILURES_PAGE = 50
TIMELINE_JOBS = 100  # jobs (with all their attempts) on the timeline page
TIMELINE_EVENTS = 50  # master starts, stops and replacements on it


class BadQuery(UsageError, ValueError):
    """A query parameter the API cannot use: answered 400 with this text."""


def job_row(job: dict[str, Any], node: str | None) -> dict[str, Any]:
    """One row of /api/jobs: what a list of jobs shows of each; `node` where
    a job that names none ran (None: nowhere known, as on a shared store)."""
    return {"key": job["key"], "state": job["state"], "target": job["target"], "attempt": job["attempts"],
            "node": job.get("node") or node, "outcome": job["outcome"], "reason": job["reason"],
            "updated_at": job["updated_at"]}


def jobs(store: Store, *, state: str | None, target: str | None, key_prefix: str | None, limit: int,
         after: tuple[float, int] | None) -> dict[str, Any]:
    """/api/jobs: a page of jobs, last changed first (as `phoenix jobs --json`),
    with `next_after` the cursor of the next page."""
    if state is not None and state not in JOB_STATES:
        raise BadQuery(f"state must be one of {', '.join(JOB_STATES)}")
    if not 1 <= limit <= MAX_PAGE:
        raise BadQuery(f"limit must be between 1 and {MAX_PAGE}")
    report = jobs_report(store, state=state, target=target, since=None, limit=limit, after=after,
                         key_prefix=key_prefix)
    # The SQLite journal's jobs all run here; a shared store names each one's master, and a job that never
    # ran there ran nowhere yet (never this dashboard's host).
    node = None if store.shared else socket.gethostname()
    report["jobs"] = [job_row(job, node) for job in report["jobs"]]
    return report


def job(store: Store, key: str) -> dict[str, Any] | None:
    """/api/jobs/KEY: the job and every attempt (as `phoenix show --json`); None if no job has the key."""
    found = store.job_by_key(key)
    return None if found is None else show_report(store, found)


def failures(store: Store, limit: int = FAILURES_PAGE) -> dict[str, Any]:
    """/api/failures: the jobs that failed last, with their last attempt's reason and error."""
    rows = store.recent_failures(limit)
    for row in rows:  # a traceback's last line names the exception; the job's page shows all of it
        row["error_line"] = (row["error"] or "").rstrip().rpartition("\n")[2].strip() or None
    return {"failures": rows}


def timeline(store: Store) -> dict[str, Any]:
    """/api/timeline: the attempts of the jobs that changed last, and the
    master's starts, stops and replacements, newest first."""
    jobs_shown, attempts, unstarted = store.timeline_recent(TIMELINE_JOBS)
    del jobs_shown  # their attempts carry what the page shows
    events = store.timeline_events()[-TIMELINE_EVENTS:]
    attempts.sort(key=_started, reverse=True)
    return {"attempts": attempts, "events": events[::-1], "unstarted": unstarted}


def _started(attempt: dict[str, Any]) -> float:
    """When the attempt started; a time another tool damaged (text or bytes in the column) sorts last."""
    started = number(attempt["started_at"])
    return -math.inf if started is None else started


def shared_masters(store_url: str) -> dict[str, Any]:
    """/api/masters of a shared store: every master's row with its node, pid,
    generation, state, lease and slots (`phoenix status --store URL`'s view),
    and the job counts."""
    report, _live = collect_shared(store_url)
    return {"masters": report["masters"], "counts": report["counts"]}


def local_master(paths: StatePaths, store: Store) -> dict[str, Any]:
    """/api/masters of the state directory's journal: its one master, from
    what it wrote into the journal and whether it holds the directory's lock
    (and runs: /proc), in the shape of a shared store's rows; the job counts."""
    pid = pidfile.live_master_pid(paths.pidfile, paths.lockfile)
    alive = pid is not None or pidfile.lock_held(paths.lockfile)
    counts = store.counts()
    recorded = {name: store.meta(name) for name in ("generation", "master_pid", "state", "started_at", "app",
                                                    "degraded_reason")}
    if not alive:
        state = "stopped"
    elif pid is not None and procfs.state(pid) in FROZEN_STATES:
        state = NOT_RESPONDING  # alive, holding the lock, but stopped (SIGSTOP, a debugger): as status says
    elif recorded["state"] in (None, "stopped"):
        state = "starting"  # alive, and the journal still says stopped: not ready yet
    else:
        state = recorded["state"]
    master = {
        "node": socket.gethostname(),
        "pid": pid if alive else None,
        "generation": recorded["generation"],
        "state": state,
        "started_at": recorded["started_at"],
        "app": recorded["app"],
        "lease_expires_in": None,  # one master on one host: no lease
        "slots_used": counts.get("running", 0),
        "slots": None,  # the master keeps its slot count in memory only: `phoenix status` asks it
        "degraded_reason": recorded["degraded_reason"] if alive and recorded["state"] == "degraded" else None,
    }
    return {"masters": [master], "counts": counts}

