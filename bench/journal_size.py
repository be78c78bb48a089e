"""How big the journal grows per job, and how long `phoenix prune` takes:
N no-op jobs with one finished attempt each, written through the journal's
own methods (as a master writes them), then pruned in its batches.

    python -m bench.journal_size [N]      (default 100000)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from phoenix.store.base import Job
from phoenix.store.sqlite import Journal


def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "journal.db"
        journal = Journal(path)
        journal.submit_many(("app.jobs:noop", f'{{"n":{i}}}', f"job-{i}") for i in range(count))
        started = time.monotonic()
        with journal.transaction() as db:  # one transaction: the size is the point here, not the speed
            jobs = db.execute("SELECT id, key, target, params, attempts, failures FROM jobs").fetchall()
            for row in jobs:
                job = Job(*row)
                db.execute("UPDATE jobs SET state = 'finished', attempts = 1, outcome = 'finished', result = ?, "
                           "updated_at = ? WHERE id = ?", (row[3], time.time(), job.id))
                cur = db.execute("INSERT INTO attempts (job_id, n, generation, pid, start_time, started_at, "
                                 "started_boot, ended_at, outcome, max_rss_kb) VALUES (?, 1, 1, ?, ?, ?, ?, ?, "
                                 "'finished', 20480)", (job.id, 100000 + job.id, 12345678, time.time(), 1000.0,
                                                        time.time()))
                assert cur.rowcount == 1
                db.execute("INSERT INTO callbacks (job_id, attempt, kind, state, runs, created_at, done_at) "
                           "VALUES (?, 1, 'on_finished', 'done', 1, ?, ?)", (job.id, time.time(), time.time()))
        journal.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = os.path.getsize(path)
        print(f"{count} jobs, one attempt and one callback each: {size / 1e6:.1f} MB "
              f"({size / count:.0f} bytes per job, {size / count:.0f} MB per million); written in "
              f"{time.monotonic() - started:.1f} s")
        started = time.monotonic()
        removed = journal.prune(finished_before=time.time() + 1, failed_before=None)
        took = time.monotonic() - started
        batches = max(1, -(-removed["jobs"] // 500))
        print(f"pruned {removed} in {took:.2f} s: {batches} transactions of 500 jobs, {took / batches * 1000:.0f} ms "
              f"each")
        journal.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
