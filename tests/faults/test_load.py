"""Load: many children beating at 2 Hz at once, for a while. No child is
killed by mistake, and no beat is lost: the master counts the gaps in each
child's sequence numbers (`beats_missing` in `phoenix status --json`)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from phoenix.store.sqlite import Journal
from tests.conftest import wait_for
from tests.faults.conftest import cpu_seconds, log_lines, report
from tests.faults.helpers import FAULTY, live, submit_all, wake

APP = "tests.apps.faulty:app"


def journal_counts(master) -> dict[str, int]:
    journal = Journal(master.state_dir / "journal.db")
    try:
        return journal.counts()
    finally:
        journal.close()


INTERVAL = 0.5  # 2 Hz
TIMEOUT = 5.0  # the default heartbeat_timeout: ten missed beats at 2 Hz


@pytest.mark.timeout(600)
def test_many_children_beating_at_2hz_no_false_kill_no_lost_beat(machine_to_itself, master_factory, long_mode):
    # 12 s: each child beats 24 times, past two whole heartbeat_timeouts (--long: 1,000 children for a minute).
    children, seconds = (1000, 60.0) if long_mode else (200, 12.0)
    master = master_factory("--workers", str(children), "--heartbeat-interval", str(INTERVAL),
                            "--heartbeat-timeout", str(TIMEOUT), app=APP)
    journal = Journal(master.state_dir / "journal.db")
    journal.submit_many((f"{FAULTY}:beat_for", json.dumps({"s": seconds, "i": i}), f"load-{i}")
                        for i in range(children))
    journal.close()
    cpu_before = cpu_seconds(master.pid)
    submitted = time.monotonic()
    wake(master)

    # All of them at once, then all of them to the end.
    wait_for(lambda: live(master)["master"]["slots_used"] == children, timeout=60 if children <= 200 else 180,
             what=f"{children} children running at once", interval=0.2)
    all_running = time.monotonic() - submitted
    peak = live(master)["master"]
    # Poll the journal, not the master: a status request reads /proc for every child.
    wait_for(lambda: journal_counts(master)["finished"] + journal_counts(master)["failed"] == children,
             timeout=seconds + 120, what="every job to end", interval=0.5)
    jobs = master.jobs()
    cpu_used = cpu_seconds(master.pid) - cpu_before
    status = live(master)["master"]

    assert len(jobs) == children
    not_finished = [j for j in jobs.values() if j["state"] != "finished" or j["attempt"] != 1]
    assert not_finished == [], not_finished[:5]
    log = master.log()
    false_kills = log_lines(log, "kill")
    assert false_kills == [], false_kills[:5]
    assert status["beats_missing"] == 0, status
    # Each child beats every INTERVAL for `seconds` (a beat that has to wait for
    # room in the master's queue delays the next one: backpressure, not loss).
    expected = children * (seconds / INTERVAL)
    assert status["beats"] >= 0.85 * expected, (status["beats"], expected)
    report("load", children=children, seconds=seconds, interval_s=INTERVAL, heartbeat_timeout_s=TIMEOUT,
           all_running_after_s=f"{all_running:.1f}", beats=status["beats"], beats_expected=f"~{expected:.0f}",
           effective_hz=f"{status['beats'] / children / seconds:.2f}",
           beats_missing=status["beats_missing"], false_kills=len(false_kills),
           rejected=json.dumps(status["rejected"]), peak_slots=peak["slots_used"],
           master_cpu_s=f"{cpu_used:.1f}")



def test_beats_missing_counts_real_gaps(master_factory):
    """The counter is not vacuous: children that skip sequence numbers (as a
    dropped beat would) show up in beats_missing, exactly."""
    children, skip = 10, 7
    master = master_factory("--workers", str(children), app=APP)
    submit_all(master, ((f"{FAULTY}:skip_seq", json.dumps({"skip": skip, "i": i}), f"skip-{i}")
                        for i in range(children)))
    wait_for(lambda: journal_counts(master)["finished"] == children, timeout=30, what="every job to end", interval=0.2)
    status = live(master)["master"]
    assert status["beats_missing"] == children * skip, status
    assert log_lines(master.log(), "kill") == []
    report("beats_missing_sanity", children=children, skipped_each=skip, beats_missing=status["beats_missing"])


def test_a_frozen_master_loses_no_beat(master_factory):
    """Children keep a beat they could not send (the master frozen by SIGSTOP,
    its queue full) until it is sent: late, not lost; and nobody is killed for
    the master's own absence shorter than heartbeat_timeout."""
    children, freeze = 20, 3.0
    master = master_factory("--workers", str(children), "--heartbeat-interval", "0.2", "--heartbeat-timeout", "20",
                            app=APP)
    submit_all(master, ((f"{FAULTY}:beat_for", json.dumps({"s": 6.0, "i": i}), f"frozen-{i}") for i in range(children)))
    wait_for(lambda: live(master)["master"]["slots_used"] == children, timeout=30, what="all children running")
    master.signal(signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        # The injected fault lasts `freeze` seconds (six times a child's send timeout).
        wait_for(lambda: time.monotonic() - frozen >= freeze, timeout=freeze + 5, what="the freeze", interval=0.05)
    finally:
        master.signal(signal.SIGCONT)
    wait_for(lambda: journal_counts(master)["finished"] == children, timeout=30, what="every job to end", interval=0.2)
    status = live(master)["master"]
    assert status["beats_missing"] == 0, status
    assert log_lines(master.log(), "kill") == []
    report("frozen_master", children=children, master_frozen_s=freeze, beats=status["beats"],
           beats_missing=status["beats_missing"], false_kills=0)
