"""In-process tests of the boot-time clock helpers, of the journal's due-time
rule built on them, of its upgrade of older journals, and of the signalfd
that reports a signal's sender."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

from phoenix.linux import clock, lineage
from phoenix.store.sqlite import Journal

OTHER_BOOT = "00000000-0000-0000-0000-000000000000"


def test_boot_clock_is_the_base_of_proc_start_times():
    # A process started a moment ago, measured on CLOCK_BOOTTIME (not this
    # worker, which may have run for many minutes of a loaded suite).
    from phoenix.linux import procfs

    fresh = subprocess.Popen(["sleep", "60"])
    try:
        assert 0.0 <= clock.age(None, procfs.start_time(fresh.pid)) < 30
        assert clock.age(clock.since_boot() - 45.0, procfs.start_time(fresh.pid)) >= 45.0  # a stored start wins
    finally:
        fresh.kill()
        fresh.wait()
    assert clock.age(None, None) == 0.0


def test_a_deadline_from_another_boot_is_due():
    due, boot = clock.after(60.0)
    assert boot == clock.boot_id() and 59.0 < clock.seconds_until(due, boot) <= 60.0
    assert clock.seconds_until(due, OTHER_BOOT) == 0.0
    assert clock.seconds_until(clock.since_boot() - 1.0, boot) == 0.0


def _journal_with_retry(tmp_path, wall_delay: float, boot_delay: float | None, boot: str | None = None) -> Journal:
    journal = Journal(tmp_path / "journal.db")
    journal.submit("m:f", "{}", "k")
    due = clock.since_boot() + boot_delay if boot_delay is not None else None
    with journal.transaction() as db:
        db.execute("UPDATE jobs SET not_before = ?, not_before_boot = ?, not_before_boot_id = ?",
                   (time.time() + wall_delay, due, boot or (clock.boot_id() if due is not None else None)))
    return journal


def test_backoff_is_judged_on_the_boot_clock(tmp_path):
    journal = _journal_with_retry(tmp_path, wall_delay=3600, boot_delay=-1)  # wall stepped back
    assert [job.key for job in journal.pending(10)] == ["k"] and journal.next_due_in() <= 0
    journal.close()
    (tmp_path / "journal.db").unlink()
    journal = _journal_with_retry(tmp_path, wall_delay=-3600, boot_delay=30)  # wall stepped forward
    assert journal.pending(10) == [] and 29 < journal.next_due_in() <= 30


def test_backoff_from_before_a_reboot_is_due(tmp_path):
    journal = _journal_with_retry(tmp_path, wall_delay=3600, boot_delay=3600, boot=OTHER_BOOT)
    assert [job.key for job in journal.pending(10)] == ["k"] and journal.next_due_in() == 0


def test_an_older_journal_gets_the_new_columns(tmp_path):
    path = tmp_path / "journal.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX jobs_backoff")
    db.execute("DROP INDEX jobs_ready")  # (journal version 3's, over not_before_boot_id)
    db.execute("PRAGMA user_version = 1")
    for table, column in (("jobs", "not_before_boot"), ("jobs", "not_before_boot_id"), ("attempts", "started_boot")):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")  # as the first release wrote it
    db.execute("INSERT INTO jobs (key, target, params, state, not_before, created_at, updated_at) "
               "VALUES ('old', 'm:f', '{}', 'pending', ?, 0, 0)", (time.time() + 3600,))
    db.commit()
    db.close()
    journal = Journal(path)
    assert journal.pending(10) == []  # an older row's wall-clock backoff still holds
    assert 3590 < journal.next_due_in() <= 3600
    journal.db.execute("UPDATE jobs SET not_before = 0")
    (job,) = journal.pending(10)
    attempt = journal.begin_attempt(job, 1, os.getpid(), None)
    (opened,) = journal.open_attempts()
    assert opened.attempt_id == attempt and abs(opened.started_boot - clock.since_boot()) < 5
    journal.end_attempt(attempt, job.id, outcome="error", reason=None, error="x", result_json=None, max_rss_kb=None,
                        job_state="pending", counts_as_failure=True, retry_delay=2.0, callback=None, attempt_n=1)
    row = journal.job_row(job.id)
    assert row["not_before_boot_id"] == clock.boot_id() and 1 < clock.seconds_until(row["not_before_boot"],
                                                                                     row["not_before_boot_id"]) <= 2
    journal.close()


_SIGNALFD_PROBE = textwrap.dedent("""
    import json, os, select, signal, subprocess, sys
    from phoenix.linux.signals import SignalFD
    fd = SignalFD({signal.SIGUSR1, signal.SIGCHLD})
    sender = subprocess.Popen([sys.executable, "-c", f"import os, signal; os.kill({os.getpid()}, signal.SIGUSR1)"])
    sender.wait()
    got = []
    while len(got) < 2:
        select.select([fd], [], [], 10)
        got += fd.read()
    print(json.dumps({"sender": sender.pid, "got": got}))
""")


def test_signalfd_names_the_sender():
    out = subprocess.run([sys.executable, "-c", _SIGNALFD_PROBE], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    got = {signum: pid for signum, pid, _uid in report["got"]}
    assert got[signal.SIGUSR1] == report["sender"]
    assert got[signal.SIGCHLD] == 0  # from the kernel


def test_a_process_in_an_attempts_group_or_tree_belongs_to_it():
    leader = subprocess.Popen(["sleep", "30"], process_group=0)
    member = subprocess.Popen(["sleep", "30"], process_group=leader.pid)
    try:
        attempts = {leader.pid: object()}
        assert lineage.owning_attempt(leader.pid, attempts) == leader.pid
        assert lineage.owning_attempt(member.pid, attempts) == leader.pid
        assert lineage.owning_attempt(os.getpid(), attempts) is None
        assert lineage.owning_attempt(member.pid, {}) is None
        # A descendant outside the group: traced through its parents.
        assert lineage.owning_attempt(member.pid, {os.getpid(): object()}) == os.getpid()
    finally:
        for process in (leader, member):
            process.kill()
            process.wait()
