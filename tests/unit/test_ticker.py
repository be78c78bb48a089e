"""The ticker (master/ticker.py) in process, on a real SQLite journal and a
wall clock the test sets: ticks inserted once whichever master looks, the
store's last tick as the start of catch-up after a restart, overlap="skip",
a clock stepped back, and delayed jobs made pending when due."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from phoenix.app import App
from phoenix.master.metrics import Counters
from phoenix.master.ticker import Ticker
from phoenix.rules.states import MasterState
from phoenix.store.sqlite import Journal

app = App()


@app.periodic(every=900)
def beat(params):
    return None


TARGET = f"{__name__}:beat"


class Host:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.app: App | None = app
        self.state = MasterState.RUNNING
        self.counters = Counters()
        self.wakes = 0

    def wake_scheduler(self) -> None:
        self.wakes += 1


def at(text: str) -> float:
    return datetime.fromisoformat(f"2026-01-01T{text}+00:00").timestamp()


def tick_jobs(journal: Journal) -> dict[str, str]:
    return dict(journal.db.execute("SELECT key, state FROM jobs WHERE tick IS NOT NULL ORDER BY tick"))


def test_each_tick_is_one_job_whichever_master_looks(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    clock = {"now": at("09:59:59")}
    first, second = Host(journal), Host(journal)
    tickers = [Ticker(first, lambda: clock["now"]), Ticker(second, lambda: clock["now"])]  # two masters
    for ticker in tickers:
        ticker.run_if_due()
    assert tick_jobs(journal) == {}  # a new schedule: nothing missed
    clock["now"] = at("10:00:05")
    for ticker in tickers:
        ticker.due = 0.0
        ticker.run_if_due()
    assert tick_jobs(journal) == {f"{TARGET}@2026-01-01T10:00:00Z": "pending"}
    assert first.counters.ticks == {"inserted": 1} and second.counters.ticks == {"taken": 1}
    assert first.wakes == 1 and second.wakes == 0


def test_after_a_restart_catch_up_starts_from_the_stores_last_tick(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    clock = {"now": at("10:00:05")}
    Ticker(Host(journal), lambda: clock["now"]).run_if_due()
    journal.db.execute("UPDATE jobs SET state = 'finished'")
    clock["now"] = at("12:07:00")  # no master from 10:00 to 12:07: the 10:15 ... 12:00 ticks were missed
    host = Host(journal)
    ticker = Ticker(host, lambda: clock["now"])  # a new master (or image): nothing in memory
    ticker.run_if_due()
    assert list(tick_jobs(journal)) == [f"{TARGET}@2026-01-01T10:00:00Z", f"{TARGET}@2026-01-01T12:00:00Z"]
    clock["now"] = at("12:15:01")  # 12:00's job has not ended: overlap="skip"
    ticker.due = 0.0
    ticker.run_if_due()
    assert len(tick_jobs(journal)) == 2 and host.counters.ticks == {"inserted": 1, "skipped": 1}
    clock["now"] = at("11:00:00")  # the wall clock stepped back an hour and a quarter
    ticker.due = 0.0
    ticker.run_if_due()
    clock["now"] = at("12:15:30")  # and forward again
    ticker.due = 0.0
    ticker.run_if_due()
    assert len(tick_jobs(journal)) == 2  # nothing fired twice, and 12:15 stays skipped


def test_a_degraded_master_fires_no_tick_but_makes_due_jobs_pending(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    host = Host(journal)
    host.app, host.state = None, MasterState.DEGRADED
    journal.submit("m:f", "null", "later", run_at=time.time() + 0.2)
    ticker = Ticker(host)
    ticker.run_if_due()
    assert ticker.earliest is not None and journal.counts()["scheduled"] == 1
    assert ticker.next_deadline() <= time.monotonic() + 0.2  # it sleeps until the due time, no longer
    time.sleep(0.25)
    ticker.run_if_due()
    assert journal.counts()["scheduled"] == 0 and journal.counts()["pending"] == 1 and host.wakes == 1
    assert tick_jobs(journal) == {}
