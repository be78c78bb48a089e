"""Bounded at scale (issue 18, class 8): what the operator's commands read
must not grow with the journal. A journal of 200,000 jobs is written by
direct SQL (seconds), then each command runs in its own process; the claims
are about what cannot flake: its peak RSS against a bound far below what
reading every job takes (211 MB for `status` at this size before the fix;
`status --json` took 436 MB at 100,000), the SQL plans (EXPLAIN QUERY PLAN),
and that the pages put together are every job once. No timing claims."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from phoenix.client import Client
from phoenix.linux.untrusted import KeyRefused
from phoenix.store.base import KeyConflict
from phoenix.store.sqlite import Journal
from tests.driver import PHOENIX

JOBS = 200_000
PENDING = 1000
RUNNING = 4
FAILED_EVERY = 100
# A bound far below what reading every job costs at JOBS, and far above a
# command's own start (Python, click, the journal: about 30 MB).
BOUNDED_MB = 80
PG_JOBS = 100_000


def job_rows(count: int, now: float) -> Iterator[tuple[Any, ...]]:
    """(id, key, target, params, state, attempts, outcome, error, updated_at): the newest job last,
    one a second; the last RUNNING running, PENDING pending before them, 1 in FAILED_EVERY failed."""
    for i in range(1, count + 1):
        if i > count - RUNNING:
            state, outcome, error = "running", None, None
        elif i > count - RUNNING - PENDING:
            state, outcome, error = "pending", None, None
        elif i % FAILED_EVERY == 0:
            state, outcome, error = "failed", "error", "Traceback ...\nValueError: bad feed"
        else:
            state, outcome, error = "finished", "finished", None
        yield (i, f"job-{i}", "app.jobs:fetch", f'{{"n":{i}}}', state, int(state != "pending"), outcome, error,
               now - (count - i))


def fill(path: Path, count: int) -> float:
    """`count` jobs and their attempts (an open one for each running job) in
    one transaction of plain SQL; returns the newest job's updated_at."""
    now = time.time()
    with Journal(path) as journal, journal.transaction() as db:
        db.executemany("INSERT INTO jobs (id, key, target, params, state, attempts, outcome, error, created_at, "
                       "updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)", job_rows(count, now))
        db.executemany("INSERT INTO attempts (job_id, n, generation, pid, started_at, ended_at, outcome, reason) "
                       "VALUES (?1, 1, 1, ?2, ?3, ?4, ?5, ?6)",
                       ((r[0], 100000 + r[0], r[8], None if r[4] == "running" else r[8], r[6],
                         "exit code 1" if r[4] == "failed" else None) for r in job_rows(count, now) if r[5]))
    return now


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory whose journal holds JOBS jobs (shared by this module's read-only tests)."""
    state_dir = tmp_path_factory.mktemp("scale") / "state"
    state_dir.mkdir()
    fill(state_dir / "journal.db", JOBS)
    return state_dir


# The command runs as the child of a small launcher, which reports its peak
# RSS. Waited for straight from the test process, the figure would not be the
# command's: at exec Linux keeps the old address space's high-water mark, and a
# process made with vfork from a pytest worker (subprocess does) starts with
# the worker's, which is hundreds of MB after the hypothesis tests.
_LAUNCHER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "_pid, status, usage = os.wait4(pid, 0)\n"
    "with open(sys.argv[1], 'w') as report:\n"
    "    report.write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(args: list[str], env: dict[str, str] | None = None,
                 tmp: Path | None = None) -> tuple[int, str, float]:
    """(exit status, stdout, peak RSS in MB) of one command: the kernel's own
    high-water mark of that process alone (see _LAUNCHER)."""
    where = tmp or Path(os.environ.get("TMPDIR", "/tmp"))
    out = where / f"out-{os.getpid()}-{time.monotonic_ns()}"
    peak_file = where / f"peak-{os.getpid()}-{time.monotonic_ns()}"
    with open(out, "wb") as sink:
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(peak_file), *PHOENIX, *args], stdout=sink,
                              stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    text = out.read_text()
    out.unlink()
    peak_kb = int(peak_file.read_text())
    peak_file.unlink()
    assert proc.returncode in (0, 3), proc.stderr.decode()  # 3: no master runs, which is the case here
    return proc.returncode, text, peak_kb / 1024


def test_status_reads_counts_failures_and_running_jobs_not_every_job(big: Path, tmp_path: Path) -> None:
    code, text, peak = run_measured(["status", "--state-dir", str(big)], tmp=tmp_path)
    assert code == 3  # no master runs
    failed = (JOBS - RUNNING - PENDING) // FAILED_EVERY
    finished = JOBS - RUNNING - PENDING - failed
    assert f"jobs: pending {PENDING}  running {RUNNING}  finished {finished}  failed {failed}  cancelled 0" in text
    last_failed = [i for i in range(JOBS - RUNNING - PENDING, 0, -1) if i % FAILED_EVERY == 0][:5]
    assert re.findall(r"job-\d+(?=  error)", text) == [f"job-{i}" for i in last_failed]
    assert re.findall(r"^job-(\d+) ", text, re.M) == [str(i) for i in range(JOBS - RUNNING + 1, JOBS + 1)]
    assert peak < BOUNDED_MB, f"phoenix status peaked at {peak:.0f} MB on {JOBS} jobs"


def test_status_json_pages_every_job_in_id_order(big: Path, tmp_path: Path) -> None:
    state = ["--state-dir", str(big)]
    _code, text, peak = run_measured(["status", "--json", *state], tmp=tmp_path)
    report = json.loads(text)
    assert [job["id"] for job in report["jobs"]] == list(range(1, 1001))  # the documented default page
    assert report["next_after"] == 1000 and report["counts"]["failed"] == (JOBS - RUNNING - PENDING) // 100
    assert peak < BOUNDED_MB, f"phoenix status --json peaked at {peak:.0f} MB on {JOBS} jobs"
    page = json.loads(run_measured(["status", "--json", "--limit", "2", "--after", "1000", *state])[1])
    assert [job["id"] for job in page["jobs"]] == [1001, 1002] and page["next_after"] == 1002
    last = json.loads(run_measured(["status", "--json", "--limit", "5", "--after", str(JOBS - 3), *state])[1])
    assert [job["id"] for job in last["jobs"]] == [JOBS - 2, JOBS - 1, JOBS] and last["next_after"] is None
    assert [job["state"] for job in last["jobs"]] == ["running"] * 3


def test_jobs_pages_by_last_change_through_the_index(big: Path, tmp_path: Path) -> None:
    state = ["--state-dir", str(big)]
    _code, text, peak = run_measured(["jobs", "--json", "--state", "failed", "--limit", "3", *state], tmp=tmp_path)
    first = json.loads(text)
    failed = (JOBS - RUNNING - PENDING) // FAILED_EVERY
    assert first["total"] == failed and first["more"] == failed - 3
    assert peak < BOUNDED_MB, f"phoenix jobs peaked at {peak:.0f} MB on {JOBS} jobs"
    second = json.loads(run_measured(["jobs", "--json", "--state", "failed", "--limit", "3",
                                      "--after", first["next_after"], *state])[1])
    keys = [job["key"] for job in first["jobs"] + second["jobs"]]
    newest_failed = [i for i in range(JOBS - RUNNING - PENDING, 0, -1) if i % FAILED_EVERY == 0]
    assert keys == [f"job-{i}" for i in newest_failed[:6]]
    assert second["more"] == failed - 6
    # Any time can be a cursor: the jobs that last changed before it (half a second before job 100's time).
    before_100 = first["jobs"][0]["updated_at"] - (newest_failed[0] - 100) - 0.5
    tail = json.loads(run_measured(["jobs", "--json", "--limit", "50", "--after", f"{before_100!r}/1", *state])[1])
    assert [job["id"] for job in tail["jobs"]] == list(range(99, 49, -1)) and tail["more"] == 49
    _code, plain, _peak = run_measured(["jobs", "--limit", "2", *state], tmp=tmp_path)
    assert f"--after {json.loads(run_measured(['jobs', '--json', '--limit', '2', *state])[1])['next_after']}" in plain


def test_the_timeline_draws_the_jobs_that_changed_last(big: Path, tmp_path: Path) -> None:
    page = tmp_path / "timeline.html"
    _code, text, peak = run_measured(["report", "--html", str(page), "--limit", "50", "--state-dir", str(big)],
                                     tmp=tmp_path)
    rows = re.findall(r'<div class="row" data-state="(\w+)" data-job="job-(\d+)"', page.read_text())
    # The 50 that changed last, pending jobs left out (they never ran): the running ones, and 46 before them.
    ended = JOBS - RUNNING - PENDING
    assert [int(job) for _state, job in rows] == [*range(ended - 45, ended + 1), *range(JOBS - RUNNING + 1, JOBS + 1)]
    assert "1000 jobs waiting for a first attempt" in page.read_text()
    assert peak < BOUNDED_MB, f"phoenix report peaked at {peak:.0f} MB on {JOBS} jobs"


def test_a_malformed_cursor_is_one_line_and_exit_2(big: Path) -> None:
    done = subprocess.run([*PHOENIX, "jobs", "--after", "yesterday", "--state-dir", str(big)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "next_after" in done.stderr
    done = subprocess.run([*PHOENIX, "status", "--limit", "5", "--state-dir", str(big)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--json" in done.stderr


def _plans(journal: Journal, read: Callable[[], Any]) -> list[str]:
    """The query plan of every statement `read` runs on the journal."""
    statements: list[str] = []
    journal.db.set_trace_callback(statements.append)
    try:
        read()
    finally:
        journal.db.set_trace_callback(None)
    plans = []
    for sql in statements:
        plans += [row[3] for row in journal.db.execute(f"EXPLAIN QUERY PLAN {sql}")]
    return plans


def test_the_reads_of_status_jobs_and_metrics_use_indexes_not_a_scan_of_jobs(big: Path) -> None:
    with Journal(big / "journal.db", create=False) as journal:
        # The counts (status, `jobs`' total, the metrics' phoenix_jobs): the kept counts, not the jobs table.
        plans = _plans(journal, journal.counts)
        assert plans and not any(re.search(r"\bj\b|\bjobs\b", plan) for plan in plans), plans
        reads: dict[str, Callable[[], Any]] = {
            "recent failures": lambda: journal.recent_failures(5),
            "running jobs": lambda: list(journal.status_rows(state="running")),
            "a page": lambda: list(journal.status_rows(after=5000, limit=1001)),
            "jobs": lambda: journal.list_jobs(state=None, target=None, since=None, limit=50),
            "jobs --state": lambda: journal.list_jobs(state="failed", target=None, since=None, limit=50),
            "jobs --after": lambda: journal.list_jobs(state=None, target=None, since=None, limit=50,
                                                      after=(time.time() - 5000, 10)),
            "timeline": lambda: journal.timeline_recent(1000),
            "key prefix": lambda: journal.list_jobs(  # the dashboard's search
                state=None, target=None, since=None, limit=50, key_prefix="job-1234"),
        }
        for name, read in reads.items():
            plans = _plans(journal, read)
            jobs_reads = [plan for plan in plans if re.search(r"\b(j|jobs)\b", plan)]
            assert jobs_reads, (name, plans)
            # SEARCH: a range of an index (or of ids); SCAN ... USING INDEX walks an index in the
            # order asked for and stops at LIMIT. A bare SCAN of jobs, or a sort of them, reads every job.
            for plan in jobs_reads:
                assert plan.startswith("SEARCH") or "USING INDEX jobs_updated" in plan, (name, plans)
            sorts = [plan for plan in plans if "TEMP B-TREE" in plan]
            # (only the running jobs are sorted, and the jobs of a key prefix: the range of the key's index)
            assert not sorts or name in ("running jobs", "key prefix"), (name, plans)


def test_kept_counts_follow_every_change_and_an_older_journal_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    fill(path, 3000)
    db = sqlite3.connect(path)  # as a journal written by a Phoenix before the kept counts
    for name in ("job_counts_insert", "job_counts_update", "job_counts_delete"):
        db.execute(f"DROP TRIGGER {name}")
    db.execute("DROP TABLE job_counts")
    db.execute("INSERT INTO jobs (key, target, params, state, created_at, updated_at) "
               "VALUES ('late', 'm:f', '{}', 'pending', 0, 0)")
    db.commit()
    db.close()

    def truth(journal: Journal) -> dict[str, int]:
        counts = dict.fromkeys(("scheduled", "pending", "running", "finished", "failed", "cancelled"), 0)
        counts.update(journal.db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        return counts

    with Journal(path) as journal:
        assert journal.counts() == truth(journal) and journal.counts()["pending"] == PENDING + 1
        journal.submit_many([("m:f", "1", "a"), ("m:f", "2", "b")])
        job = journal.pending(1)[0]
        attempt = journal.begin_attempt(job, 1, 4242, None)
        assert journal.counts() == truth(journal)
        journal.end_attempt(attempt, job.id, outcome="error", reason="exit code 1", error="x", result_json=None,
                            max_rss_kb=None, job_state="failed", counts_as_failure=True, callback=None,
                            attempt_n=job.attempts + 1)
        journal.cancel_pending("a")
        journal.retry([job.key])
        assert journal.counts() == truth(journal)
        journal.prune(finished_before=time.time() + 1, failed_before=time.time() + 1)
        assert journal.counts() == truth(journal) and journal.counts()["finished"] == 0


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Client:
    if request.param == "sqlite":
        return Client(state_dir=str(tmp_path / "state"))
    pytest.importorskip("psycopg")
    return Client(store=request.getfixturevalue("pg_url"))


def _keys(client: Client) -> dict[str, str]:
    from phoenix.store.open import open_store

    with open_store(client.store, client.paths.journal) as store:
        return {row["key"]: row["state"] for row in store.status_rows()}


def test_submit_many_is_one_transaction_with_submits_rules(client: Client) -> None:
    first = client.submit_many([("app.jobs:fetch", {"url": "a"}, "a"), ("app.jobs:fetch", {"url": "b"}, "b"),
                                ("app.jobs:fetch", {"url": "c"}, None)])
    assert [created for _id, created in first] == [True, True, True] and len({i for i, _ in first}) == 3
    # The same jobs again: not created, the same ids; a new one beside them is.
    again = client.submit_many([("app.jobs:fetch", {"url": "b"}, "b"), ("app.jobs:fetch", {"url": "c"}, None),
                                ("app.jobs:fetch", {"url": "d"}, "d")])
    assert again[:2] == [(first[1][0], False), (first[2][0], False)] and again[2][1] is True
    # A key that names another job: KeyConflict, and nothing of that batch is recorded.
    with pytest.raises(KeyConflict, match="other parameters"):
        client.submit_many([("app.jobs:fetch", {"url": "e"}, "e"), ("app.jobs:fetch", {"url": "other"}, "a")])
    # Bad input is refused before the store is written: a bad key, a target not of the form module:name.
    with pytest.raises(KeyRefused):
        client.submit_many([("app.jobs:fetch", {"url": "f"}, "f"), ("app.jobs:fetch", {}, "bad\x00key")])
    with pytest.raises(ValueError, match="module"):
        client.submit_many([("app.jobs:fetch", {"url": "g"}, "g"), ("no-colon", {}, "h")])
    keys = _keys(client)
    assert set(keys) == {"a", "b", "d"} | {k for k in keys if len(k) == 32} and len(keys) == 4
    assert set(keys.values()) == {"pending"}


def test_shared_store_status_is_bounded_too(pg_url: str, tmp_path: Path) -> None:
    """100,000 jobs here (the old status read them all: 180 MB; 345 MB at 200,000), to keep it short."""
    psycopg = pytest.importorskip("psycopg")
    now = time.time()
    with psycopg.connect(pg_url, autocommit=False) as conn, conn.cursor() as cur:
        with cur.copy("COPY jobs (id, key, target, params, state, attempts, outcome, error, created_at, updated_at) "
                      "FROM STDIN") as copy:
            for row in job_rows(PG_JOBS, now):
                copy.write_row((*row, row[8]))
        with cur.copy("COPY attempts (job_id, n, master, epoch, generation, pid, started_at, ended_at, state, "
                      "outcome, reason) FROM STDIN") as copy:
            for row in job_rows(PG_JOBS, now):
                if row[5]:
                    running = row[4] == "running"
                    copy.write_row((row[0], 1, "node-a", 1, 1, 100000 + row[0], row[8], None if running else row[8],
                                    "running" if running else "ended", row[6],
                                    "exit code 1" if row[4] == "failed" else None))
        cur.execute("UPDATE jobs j SET current_attempt = a.id FROM attempts a WHERE a.job_id = j.id")
        conn.commit()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("VACUUM ANALYZE attempts")
    store = ["--store", pg_url]
    _code, text, peak = run_measured(["status", *store], tmp=tmp_path)
    failed = (PG_JOBS - RUNNING - PENDING) // FAILED_EVERY
    finished = PG_JOBS - RUNNING - PENDING - failed
    assert f"pending {PENDING}  running {RUNNING}  finished {finished}  failed {failed}" in text
    running_keys = [str(i) for i in range(PG_JOBS - RUNNING + 1, PG_JOBS + 1)]
    assert re.findall(r"^  job-(\d+)  attempt", text, re.M) == running_keys
    assert peak < BOUNDED_MB, f"phoenix status --store peaked at {peak:.0f} MB on {PG_JOBS} jobs"
    _code, text, peak = run_measured(["status", "--json", "--limit", "10", "--after", "100", *store], tmp=tmp_path)
    page = json.loads(text)
    assert [job["id"] for job in page["jobs"]] == list(range(101, 111)) and page["next_after"] == 110
    assert page["jobs"][0]["node"] == "node-a"
    assert peak < BOUNDED_MB, f"phoenix status --store --json peaked at {peak:.0f} MB on {PG_JOBS} jobs"
