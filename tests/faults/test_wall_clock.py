"""Durations ignore the wall clock: an adopted attempt's age and a retry's
backoff are measured on CLOCK_BOOTTIME. The machine's clock is not stepped
here (that needs CAP_SYS_TIME and would disturb everything else running):
the journal's wall-clock values are moved instead, as a step would have
moved them relative to time.time()."""

import json
import signal
import sqlite3
import time

from phoenix.linux import clock
from phoenix.store.sqlite import Journal
from tests.conftest import wait_for
from tests.faults.helpers import live, wake

TARGET = "tests.apps.takeover:until_released"  # max_runtime = 30 s
HOUR = 3600.0


def test_adopted_attempt_keeps_its_age_across_a_clock_step(master_factory, tmp_path):
    master = master_factory(app="tests.apps.takeover:app")
    release = tmp_path / "release"
    journal = Journal(master.state_dir / "journal.db")
    try:
        job_id, _ = journal.submit(TARGET, json.dumps({"release": str(release)}), "long")
    finally:
        journal.close()
    wake(master)
    wait_for(lambda: str(job_id) in live(master)["running"], 15, "the job to run")
    # The wall clock jumps an hour ahead: by time.time(), the attempt now
    # started an hour ago, far beyond its 30 s max_runtime.
    db = sqlite3.connect(master.state_dir / "journal.db")
    with db:
        db.execute("UPDATE attempts SET started_at = started_at - ? WHERE job_id = ?", (HOUR, job_id))
    db.close()
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2", what="the replacement to be ready")
    running = live(master)["running"][str(job_id)]
    assert running["adopted"] is False and running["age"] < 30, running  # our own child, its real age
    release.touch()
    job = master.wait_jobs_done(["long"], timeout=20)["long"]
    assert job["outcome"] == "finished", job


def test_backoff_is_not_stretched_by_a_clock_step(master_factory, state_dir):
    # A retry was due in a moment when the wall clock stepped an hour back:
    # by time.time() it is now an hour away.
    state_dir.mkdir(mode=0o700)
    journal = Journal(state_dir / "journal.db")
    try:
        journal.submit("tests.apps.takeover:noop", json.dumps({"retried": True}), "retry")
        columns = {row[1] for row in journal.db.execute("PRAGMA table_info(jobs)")}
        with journal.transaction() as db:
            db.execute("UPDATE jobs SET not_before = ? WHERE key = 'retry'", (time.time() + HOUR,))
            if "not_before_boot" in columns:  # what this Phoenix recorded beside it
                due, boot = clock.after(0.5)
                db.execute("UPDATE jobs SET not_before_boot = ?, not_before_boot_id = ? WHERE key = 'retry'",
                           (due, boot))
    finally:
        journal.close()
    master = master_factory(app="tests.apps.takeover:app")
    job = master.wait_jobs_done(["retry"], timeout=15)["retry"]
    assert job["outcome"] == "finished", job
