"""The ticker (master/ticker.py) in process, on a real SQLite journal, a
FakeClock and a wall clock the test sets: ticks inserted once whichever
master looks, the store's last tick as the start of catch-up after a
restart, overlap="skip", a clock stepped back, and delayed jobs made pending
when due."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from phoenix.app import App
from phoenix.master.metrics import Counters
from phoenix.master.ticker import Ticker
from phoenix.rules.states import MasterState
from phoenix.store.sqlite import Journal
from phoenix.testing import FakeClock
from tests.driver import wait_for

app = App()


@app.periodic(every=900)
def beat(params):
    return None


TARGET = f"{__name__}:beat"


class Host:
    """What a master hands its ticker, and what the test reads back."""

    def __init__(self, journal: Journal, wall: dict[str, float] | None = None, *, degraded: bool = False,
                 with_app: App | None = None) -> None:
        self.journal = journal
        self.state = MasterState.DEGRADED if degraded else MasterState.RUNNING
        self.counters = Counters()
        self.wakes = 0
        self.clock = FakeClock()
        self.ticker = Ticker(lambda: self.journal, None if degraded else (with_app or app), lambda: self.state,
                             self.counters,
                             self.wake, self.clock, (lambda: wall["now"]) if wall is not None else time.time)

    def wake(self) -> None:
        self.wakes += 1

    def look(self) -> None:
        """The ticker's next look, whenever its deadline is."""
        self.clock.advance(max(0.0, self.ticker.next_deadline() - self.clock.monotonic()))
        self.ticker.run_if_due()


def at(text: str) -> float:
    return datetime.fromisoformat(f"2026-01-01T{text}+00:00").timestamp()


def tick_jobs(journal: Journal) -> dict[str, str]:
    return dict(journal.db.execute("SELECT key, state FROM jobs WHERE tick IS NOT NULL ORDER BY tick"))


def test_each_tick_is_one_job_whichever_master_looks(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    wall = {"now": at("09:59:59")}
    first, second = Host(journal, wall), Host(journal, wall)  # two masters on one store
    for host in (first, second):
        host.look()
    assert tick_jobs(journal) == {}  # a new schedule: nothing missed
    wall["now"] = at("10:00:05")
    for host in (first, second):
        host.look()
    assert tick_jobs(journal) == {f"{TARGET}@2026-01-01T10:00:00Z": "pending"}
    assert first.counters.ticks == {"inserted": 1} and second.counters.ticks == {"taken": 1}
    assert first.wakes == 1 and second.wakes == 0


def test_after_a_restart_catch_up_starts_from_the_stores_last_tick(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    wall = {"now": at("10:00:05")}
    Host(journal, wall).look()
    journal.db.execute("UPDATE jobs SET state = 'finished'")
    wall["now"] = at("12:07:00")  # no master from 10:00 to 12:07: the 10:15 ... 12:00 ticks were missed
    host = Host(journal, wall)  # a new master (or image): nothing in memory
    host.look()
    assert list(tick_jobs(journal)) == [f"{TARGET}@2026-01-01T10:00:00Z", f"{TARGET}@2026-01-01T12:00:00Z"]
    wall["now"] = at("12:15:01")  # 12:00's job has not ended: overlap="skip"
    host.look()
    assert len(tick_jobs(journal)) == 2 and host.counters.ticks == {"inserted": 1, "skipped": 1}
    wall["now"] = at("11:00:00")  # the wall clock stepped back an hour and a quarter
    host.look()
    wall["now"] = at("12:15:30")  # and forward again
    host.look()
    assert len(tick_jobs(journal)) == 2  # nothing fired twice, and 12:15 stays skipped


def test_a_degraded_master_fires_no_tick_but_makes_due_jobs_pending(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    host = Host(journal, degraded=True)
    journal.submit("m:f", "null", "later", run_at=time.time() + 0.2)
    host.ticker.run_if_due()
    assert host.ticker.earliest is not None and journal.counts()["scheduled"] == 1
    assert host.ticker.next_deadline() <= host.clock.monotonic() + 0.2  # it sleeps until the due time, no longer
    time.sleep(0.25)  # (the journal's own clock: the due time is wall-clock time)
    host.look()
    assert journal.counts()["scheduled"] == 0 and journal.counts()["pending"] == 1 and host.wakes == 1
    assert tick_jobs(journal) == {}


def test_a_delayed_job_submitted_without_a_wake_up_is_seen_within_a_second(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    # An app with no schedule: this test runs on the real wall clock, where the module's app's 15-minute
    # schedule would insert a tick (and wake the scheduler once more) whenever the test crosses a quarter hour.
    host = Host(journal, with_app=App())
    host.look()  # nothing scheduled yet
    journal.submit("m:f", "null", "later", run_at=time.time() + 0.05)  # as App.submit from a script: no wake-up
    wait_for(lambda: time.time() > journal.next_scheduled_at(), 5, "its due time")  # type: ignore[operator]
    host.look()
    assert host.clock.monotonic() - 1000.0 <= 1.0 + 1e-9  # the ticker's next look came within a second
    assert journal.counts()["pending"] == 1 and host.wakes == 1
