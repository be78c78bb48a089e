"""Commands in-process, on a fake clock and a real SQLite journal: each
branch of the dispatcher asks the part that owns what it changes, and what
only the master decides (its slots) of the master; a malformed request gets
one line saying what is wrong, and changes nothing."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phoenix.config import Config
from phoenix.master.attempts import AttemptTable
from phoenix.master.dispatch import Dispatcher
from phoenix.master.hangs import HangKiller
from phoenix.master.heartbeats import HeartbeatIntake
from phoenix.master.loop import Loop
from phoenix.master.metrics import Counters
from phoenix.rules.commands import Command
from phoenix.rules.states import MasterState, StopMode
from phoenix.store.sqlite import Journal
from phoenix.testing import FakeClock


class Master:
    """What only the master decides; it notes what it was asked."""

    def __init__(self) -> None:
        self.slots = 2
        self.state = MasterState.RUNNING
        self.asked: list[str] = []

    def set_slots(self, wanted: int) -> None:
        self.slots = wanted

    def reload_configuration(self) -> None:
        self.asked.append("reload_configuration")

    def callbacks_held(self) -> bool:
        return False


class Parts:
    """The parts a command reaches; they note what they were asked."""

    def __init__(self) -> None:
        self.asked: list[Any] = []

    def begin_stop(self, mode: StopMode, signum: int | None = None,
                   interrupt_after: float | None = None) -> float | None:
        self.asked.append(("stop", mode, signum, interrupt_after))
        return interrupt_after  # (the stop part's seconds left: tests/unit/test_stopping.py)

    def request_reload(self, force: bool = False) -> dict[str, Any]:
        self.asked.append(("reload", force))
        return {"ok": True, "reload": "started"}


class Commanding:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.loop = Loop(self.clock)
        self.journal = Journal(tmp_path / "journal.db")
        self.config = Config()
        self.attempts = AttemptTable()
        counters = Counters()
        intake = HeartbeatIntake(self.attempts, counters, os.getuid(), lambda _held: True, lambda: None, self.clock)
        self.hangs = HangKiller(self.attempts, self.loop, lambda: self.config, counters, intake, lambda: None,
                                lambda: False)
        self.master = Master()
        self.parts = Parts()
        self.dispatcher = Dispatcher(self.master, lambda: self.journal,
                                     lambda with_running=True: {"running": len(self.attempts)},
                                     lambda: self.parts.asked.append("wake"),
                                     lambda: self.parts.asked.append("wake_ticker"), self.parts, self.parts,
                                     lambda: self.parts.asked.append("discard_spare"), self.attempts, self.hangs,
                                     lambda: self.parts.asked.append("run_owed"), self.clock)


@pytest.fixture
def commanding(tmp_path: Path) -> Iterator[Commanding]:
    commanding = Commanding(tmp_path)
    yield commanding
    commanding.journal.close()


def test_each_command_asks_the_part_that_owns_it(commanding: Commanding) -> None:
    d, parts, master = commanding.dispatcher, commanding.parts, commanding.master
    assert d.execute(Command.SLOT_MORE) == {"ok": True} and master.slots == 3 and parts.asked == ["wake"]
    d.execute(Command.SLOT_LESS)
    assert master.slots == 2 and parts.asked == ["wake"]  # fewer slots start nothing
    d.execute(Command.DRAIN, signum=28)
    assert parts.asked[-1] == ("stop", StopMode.DRAIN, 28, None)
    assert d.control_request({"cmd": "reload", "force": True}) == {"ok": True, "reload": "started"}
    assert parts.asked[-1] == ("reload", True)
    d.execute(Command.RELOAD_CONFIG)
    assert master.asked == ["reload_configuration"]
    assert d.execute(Command.STATUS) == {"ok": True, "running": 0}


def test_a_wake_reads_the_due_times_again_a_slot_more_does_not(commanding: Commanding) -> None:
    d, parts = commanding.dispatcher, commanding.parts
    d.execute(Command.SLOT_MORE)
    assert parts.asked == ["wake"]  # a slot makes no delayed job due
    assert d.control_request({"cmd": "wake"}) == {"ok": True}
    assert parts.asked == ["wake", "wake", "wake_ticker"]  # a submitted job may be due before the earliest known


def test_a_malformed_request_gets_one_line_and_changes_nothing(commanding: Commanding) -> None:
    answer = commanding.dispatcher.control_request({"cmd": "explode"})
    assert answer["ok"] is False and "\n" not in answer["error"] and answer["error"]
    assert commanding.parts.asked == [] and commanding.master.asked == []


def test_a_drains_deadline_reaches_the_stop_part_and_its_reply(commanding: Commanding) -> None:
    """`phoenix stop --drain --timeout S` hands the master its deadline; the reply says the master holds it."""
    answer = commanding.dispatcher.control_request({"cmd": "stop", "mode": "drain", "interrupt_after": 0})
    assert answer == {"ok": True, "interrupt_after": 0.0}
    assert commanding.parts.asked == [("stop", StopMode.DRAIN, None, 0.0)]


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), float("-inf"), -1, 4e7, True, "30", [30]])
def test_a_drains_deadline_that_is_not_seconds_is_refused_and_changes_nothing(commanding: Commanding,
                                                                             seconds: Any) -> None:
    """JSON's NaN and Infinity parse (json.loads): each is refused by the range check, not waited on."""
    answer = commanding.dispatcher.control_request({"cmd": "stop", "mode": "drain", "interrupt_after": seconds})
    assert answer["ok"] is False and "interrupt_after must be seconds from 0 to" in answer["error"], answer
    assert commanding.parts.asked == []


def test_only_a_drain_has_a_deadline(commanding: Commanding) -> None:
    answer = commanding.dispatcher.control_request({"cmd": "stop", "mode": "term", "interrupt_after": 5})
    assert answer["ok"] is False and "a drain's deadline" in answer["error"]
    assert commanding.parts.asked == []


def test_a_cancel_ends_a_pending_job_in_the_journal_and_leaves_another_hosts_alone(
        commanding: Commanding) -> None:
    journal = commanding.journal
    journal.submit("m:f", "{}", "waits")
    journal.submit("m:f", "{}", "runs")
    job = next(j for j in journal.pending(2) if j.key == "runs")
    journal.begin_attempt(job, 1, None, None)  # running, but no process of this master's: nothing to signal
    answer = commanding.dispatcher.control_request({"cmd": "cancel", "keys": ["waits", "runs", "nobody"]})
    assert answer == {"ok": True, "cancelled": {"waits": "pending", "runs": "running elsewhere", "nobody": "unknown"}}
    assert "run_owed" in commanding.parts.asked  # the cancelled pending job's on_failed is owed
    assert [j.key for j in journal.pending(5)] == []


def test_a_cancel_ends_a_delayed_job_and_owes_its_callback(commanding: Commanding) -> None:
    journal = commanding.journal
    journal.submit("m:f", "{}", "later", run_at=time.time() + 3600)
    answer = commanding.dispatcher.control_request({"cmd": "cancel", "keys": ["later"]})
    assert answer == {"ok": True, "cancelled": {"later": "scheduled"}}
    assert "run_owed" in commanding.parts.asked  # its on_failed is owed, as a pending job's
