"""The stop part in-process, on a fake clock and a real SQLite journal.

A stop with an outcome the journal has not taken (its child finished and
holds it through an outage) waits: the master does not reach `stopped`
while that child runs, never signals it, and says once why it waits; once
the journal takes the writes an outage queued, it may exit. A stop with
nothing unrecorded stops at once."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from phoenix.app import App
from phoenix.config import Config
from phoenix.linux.paths import StatePaths
from phoenix.linux.pidfile import PidFile
from phoenix.master.attempts import Attempt, AttemptTable
from phoenix.master.callbacks import CallbackRunner
from phoenix.master.hangs import HangKiller
from phoenix.master.heartbeats import HeartbeatIntake
from phoenix.master.loop import Loop
from phoenix.master.metrics import Counters
from phoenix.master.settler import CallbackSettler
from phoenix.master.spawner import Spawner
from phoenix.master.specs import JobSpecs
from phoenix.master.stopping import Stopping
from phoenix.rules.outcomes import classify
from phoenix.rules.states import MASTER_TRANSITIONS, KillReason, MasterState, Outcome, StopMode, check_move
from phoenix.store.outage import RETRY_EVERY, JournalOutage
from phoenix.store.sqlite import Journal
from phoenix.testing import FakeClock
from phoenix.wire import control
from phoenix.wire import heartbeat as protocol


class Master:
    """What only the master decides: its state, through its one writer."""

    def __init__(self) -> None:
        self.state = MasterState.RUNNING
        self.slots = 2
        self.generation = 1

    def change_state(self, new: MasterState) -> None:
        self.state = check_move(MASTER_TRANSITIONS, self.state, new)


class Ending:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.loop = Loop(self.clock)
        self.loop.open()
        self.paths = StatePaths(str(tmp_path / "state"))
        self.paths.ensure()
        self.journal = Journal(self.paths.journal)
        self.config = Config()
        self.outage = JournalOutage(str(self.paths.journal), self.clock)
        self.attempts = AttemptTable()
        counters = Counters()
        intake = HeartbeatIntake(self.attempts, counters, os.getuid(), lambda _held: True, lambda: None, self.clock)
        self.callbacks = CallbackRunner(1, self.clock)
        settler = CallbackSettler(None, lambda: self.journal, self.callbacks, lambda: self.config, counters,
                                  self.clock, self.guarded)
        spawner = Spawner(None, lambda: self.config, self.paths, JobSpecs(App("t"), lambda: self.config), self.loop,
                          lambda: 2, lambda: False)
        hangs = self.hangs = HangKiller(self.attempts, self.loop, lambda: self.config, counters, intake,
                                        lambda: None, lambda: False)
        self.control = control.ControlServer(control.bind(self.paths.control_socket), self.loop.selector,
                                             lambda request: {"ok": True}, lambda why: None, clock=self.clock)
        self.master = Master()
        self.stopping = Stopping(self.master, lambda: self.config, lambda: self.journal, self.outage, self.attempts,
                                 self.callbacks, settler, spawner, hangs, self.control, self.paths,
                                 PidFile(self.paths.pidfile, self.paths.lockfile), None, lambda: False, 0.0,
                                 self.clock)

    def guarded(self, operation: Callable[[], Any], retry: bool = False) -> None:
        operation()

    def child_holding_its_outcome(self) -> Attempt:
        """A child that finished in an outage: its outcome is with it alone (it is no process: never signalled)."""
        now = self.clock.monotonic()
        attempt = Attempt(1, 1, "k", "m:f", 1, 4_000_000, None, now, now, now)
        attempt.final = {"type": "finished", "result": 1}
        self.attempts.add(attempt)
        self.outage.failed(OSError(28, "No space left on device"), "hold_finals")
        return attempt

    def may_exit(self) -> bool:
        """The loop's condition to end (arbiter.Master.run)."""
        return self.master.state == MasterState.STOPPED and not self.stopping.holds_unwritten()

    def close(self) -> None:
        self.callbacks.shutdown()
        self.control.close()
        self.journal.close()
        self.loop.selector.close()


@pytest.fixture
def ending(tmp_path: Path) -> Iterator[Ending]:
    ending = Ending(tmp_path)
    yield ending
    ending.close()


def test_a_stop_with_nothing_unrecorded_exits(ending: Ending) -> None:
    ending.stopping.begin_stop(StopMode.TERM)
    assert ending.master.state == MasterState.STOPPING
    ending.stopping.check_finished()
    assert ending.may_exit()
    assert ending.stopping.unrecorded_outcomes() == 0 and not ending.stopping.exit_wait_noted


def test_a_stop_with_an_unrecorded_outcome_waits_for_its_child(ending: Ending) -> None:
    attempt = ending.child_holding_its_outcome()
    ending.stopping.begin_stop(StopMode.TERM)
    assert attempt.kill_reason is None and not attempt.interrupted  # never signalled: it holds the only copy
    for _turn in range(3):
        ending.clock.advance(RETRY_EVERY)
        ending.stopping.check_finished()
        assert ending.master.state == MasterState.STOPPING and not ending.may_exit()
    assert ending.stopping.unrecorded_outcomes() == 1
    assert ending.stopping.exit_wait_noted  # said once why
    ending.stopping.begin_stop(StopMode.TERM, signal.SIGINT)  # a second Ctrl-C: stop now, still not this child
    assert attempt.kill_reason is None
    attempt.final_held = True  # the journal took it; the child acknowledged exits
    ending.attempts.remove(attempt.pid)
    ending.stopping.check_finished()
    assert ending.may_exit()


def test_a_stopped_master_waits_for_queued_writes_until_the_journal_takes_them(ending: Ending) -> None:
    written: list[str] = []
    ending.outage.failed(OSError(28, "No space left on device"), "record", lambda: written.append("record"))
    ending.stopping.begin_stop(StopMode.TERM)
    ending.stopping.check_finished()
    assert ending.master.state == MasterState.STOPPED and not ending.may_exit()
    assert ending.stopping.unrecorded_outcomes() == 1
    ending.clock.advance(RETRY_EVERY)
    assert ending.outage.retry_if_due(ending.journal.probe_write) and written == ["record"]
    assert ending.may_exit()


def running_attempt(ending: Ending) -> Attempt:
    """A child at work (a pid no process has: the signals find nobody, the decisions are what is tested)."""
    now = ending.clock.monotonic()
    attempt = Attempt(2, 2, "long", "m:f", 1, 4_000_001, None, now, now, now)
    ending.attempts.add(attempt)
    return attempt


def test_a_drain_out_of_time_is_interrupted_by_the_master_itself(ending: Ending) -> None:
    """The deadline is the master's (on its clock), not the `phoenix stop` process's, which may be gone."""
    attempt = running_attempt(ending)
    assert ending.stopping.begin_stop(StopMode.DRAIN, interrupt_after=30.0) == 30.0
    assert ending.master.state == MasterState.DRAINING
    assert ending.stopping.next_deadline() == ending.clock.monotonic() + 30.0  # the loop wakes for it
    ending.clock.advance(29.9)
    ending.stopping.interrupt_drain_if_due()
    assert ending.master.state == MasterState.DRAINING and not attempt.interrupted
    ending.clock.advance(0.1)
    ending.stopping.interrupt_drain_if_due()
    assert ending.master.state == MasterState.STOPPING and attempt.interrupted  # TERM: outcome `interrupted`
    assert ending.stopping.next_deadline() is None
    assert ending.stopping.stop_signal == signal.SIGQUIT  # a drain, for the exit code (exits.py)


def test_a_drain_with_no_time_interrupts_at_once(ending: Ending) -> None:
    attempt = running_attempt(ending)
    assert ending.stopping.begin_stop(StopMode.DRAIN, interrupt_after=0.0) == 0.0
    assert ending.master.state == MasterState.STOPPING and attempt.interrupted


def test_a_drain_without_a_deadline_waits_for_its_jobs_however_long(ending: Ending) -> None:
    attempt = running_attempt(ending)
    assert ending.stopping.begin_stop(StopMode.DRAIN) is None
    assert ending.stopping.next_deadline() is None
    ending.clock.advance(10 * 24 * 3600.0)
    ending.stopping.interrupt_drain_if_due()
    assert ending.master.state == MasterState.DRAINING and not attempt.interrupted


def test_a_second_stop_during_a_drain_may_bring_its_deadline_nearer_never_put_it_off(ending: Ending) -> None:
    attempt = running_attempt(ending)
    ending.stopping.begin_stop(StopMode.DRAIN, interrupt_after=30.0)
    ending.clock.advance(10.0)
    assert ending.stopping.begin_stop(StopMode.DRAIN, interrupt_after=60.0) == 20.0  # the first one holds
    assert ending.stopping.begin_stop(StopMode.DRAIN) == 20.0  # a drain with no --timeout keeps it too
    assert ending.stopping.begin_stop(StopMode.DRAIN, interrupt_after=5.0) == 5.0
    ending.clock.advance(5.0)
    ending.stopping.interrupt_drain_if_due()
    assert ending.master.state == MasterState.STOPPING and attempt.interrupted


def test_a_drain_whose_jobs_end_in_time_stops_with_none_interrupted(ending: Ending) -> None:
    attempt = running_attempt(ending)
    ending.stopping.begin_stop(StopMode.DRAIN, interrupt_after=30.0)
    ending.clock.advance(12.0)
    ending.attempts.remove(attempt.pid)  # (its outcome recorded, its child reaped)
    ending.stopping.check_finished()
    ending.clock.advance(30.0)
    ending.stopping.interrupt_drain_if_due()
    assert ending.may_exit() and not attempt.interrupted and ending.stopping.next_deadline() is None


def test_a_stop_during_a_hang_kills_grace_leaves_it_a_kill(ending: Ending) -> None:
    """Found from outside: `phoenix stop` while a hung job's TERM handler ran
    turned the kill into `interrupted`: the hang was excused, no retry used."""
    attempt = running_attempt(ending)
    ending.hangs.kill(attempt, KillReason.STALL_TIMEOUT, ending.clock.monotonic())
    ending.stopping.begin_stop(StopMode.TERM)
    assert not attempt.interrupted and attempt.kill_reason == KillReason.STALL_TIMEOUT
    failed_on_term = {protocol.KIND: "failed", protocol.ERROR: "RuntimeError: cleanup failed"}
    result = classify(final=failed_on_term, status=256, interrupted=attempt.interrupted,
                      kill_reason=attempt.kill_reason, kill_detail=attempt.kill_detail,
                      final_before_stop=attempt.final_before_stop)
    assert (result.outcome, result.reason) == (Outcome.KILLED, "stall_timeout")


@pytest.fixture
def ignores_term() -> Iterator[subprocess.Popen[bytes]]:
    """A real process in its own group that ignores TERM (from before its exec: no race), as a slow
    job saving its place does: only a KILL ends it."""
    child = subprocess.Popen(["sleep", "60"], start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    yield child
    child.kill()
    child.wait()


def test_a_stop_while_stopping_never_cuts_the_kill_grace_short_only_sigint_does(
        ending: Ending, ignores_term: subprocess.Popen[bytes]) -> None:
    """A kubelet's TERM after a preStop drain ran out of time, a second `phoenix stop`: each job keeps
    its kill_grace to save its place (they SIGKILLed it at once before). A second Ctrl-C is the fast path."""
    now = ending.clock.monotonic()
    attempt = Attempt(3, 3, "slow", "m:f", 1, ignores_term.pid, None, now, now, now)
    ending.attempts.add(attempt)
    ending.stopping.begin_stop(StopMode.DRAIN, interrupt_after=0.0)  # out of time at once: TERM
    assert ending.master.state == MasterState.STOPPING and attempt.interrupted
    for again in (signal.SIGTERM, None, signal.SIGQUIT):  # a TERM, a `phoenix stop`, a drain asked now
        ending.stopping.begin_stop(StopMode.DRAIN if again == signal.SIGQUIT else StopMode.TERM, again)
        with pytest.raises(subprocess.TimeoutExpired):
            ignores_term.wait(timeout=0.2)  # still alive: no KILL before its kill_grace
    ending.stopping.begin_stop(StopMode.TERM, signal.SIGINT)
    assert ignores_term.wait(timeout=10) == -signal.SIGKILL
