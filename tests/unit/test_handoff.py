"""The handoff's phase machine in-process, on a fake clock: a replacement is
refused while it could lose what the master holds; a preflight that fails
or overruns reload_timeout ends the replacement (killed at that fake moment,
not before), and this image carries on and runs the callbacks held for it;
a preflight that passes waits for running callbacks before any exec. The
preflight is the real `phoenix check` process, reaped as the loop does."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from phoenix.config import Config
from phoenix.linux.paths import StatePaths
from phoenix.linux.pidfile import PidFile
from phoenix.master.attempts import AttemptTable
from phoenix.master.handoff import Handoff
from phoenix.master.heartbeats import HeartbeatIntake
from phoenix.master.loop import Loop
from phoenix.master.metrics import Counters
from phoenix.rules.states import HandoffPhase, MasterState
from phoenix.store.outage import JournalOutage
from phoenix.store.sqlite import Journal
from phoenix.testing import FakeClock
from phoenix.wire import control

APP = "tests.apps.jobs:app"


class Master:
    """What only the master being replaced knows or does."""

    def __init__(self) -> None:
        self.app_spec: str | None = APP
        self.config_file: str | None = None
        self.generation = 3
        self.state = MasterState.RUNNING

    def end_spare(self) -> None:
        raise AssertionError("no exec in these tests")


class Replacing:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.loop = Loop(self.clock)
        self.loop.open()
        self.paths = StatePaths(str(tmp_path / "state"))
        self.paths.ensure()
        self.journal = Journal(self.paths.journal)
        self.config = Config(reload_timeout=20.0)
        self.outage = JournalOutage(str(self.paths.journal), self.clock)
        attempts = AttemptTable()
        intake = HeartbeatIntake(attempts, Counters(), os.getuid(), lambda _held: True, lambda: None, self.clock)
        self.control = control.ControlServer(control.bind(self.paths.control_socket), self.loop.selector,
                                             lambda request: {"ok": True}, lambda why: None, clock=self.clock)
        self.master = Master()
        self.callbacks_busy = False
        self.owed_runs = 0
        self.handoff = Handoff(self.master, lambda: self.config, self.paths, lambda: self.journal, self.outage,
                               self.loop, intake, self.control, PidFile(self.paths.pidfile, self.paths.lockfile),
                               attempts, self.run_owed_callbacks, lambda: self.callbacks_busy, self.reopen_journal,
                               self.leave_children_running)

    def run_owed_callbacks(self) -> None:
        self.owed_runs += 1

    def reopen_journal(self) -> None:
        raise AssertionError("no exec in these tests")

    def leave_children_running(self) -> None:
        raise AssertionError("no new master in these tests")

    def phase(self) -> HandoffPhase:
        return self.handoff.phase

    def preflight_exits(self) -> int:
        """Wait for the preflight's exit and hand it back, as the reaper does."""
        pid = self.handoff.helper_pid
        assert pid is not None
        _pid, status = os.waitpid(pid, 0)
        assert self.loop.subprocess_exited(pid, status)
        return status

    def close(self) -> None:
        pid = self.handoff.helper_pid
        if pid is not None and pid in self.loop.subprocesses:  # not reaped: a test that failed midway
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self.control.close()
        self.journal.close()
        self.loop.selector.close()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Replacing]:
    parts = Replacing(tmp_path)
    yield parts
    parts.close()


def test_no_replacement_while_the_journal_cannot_take_what_the_master_holds(parts: Replacing) -> None:
    parts.outage.failed(OSError(28, "No space left on device"), "record")
    answer = parts.handoff.request_reload()
    assert answer["ok"] is False and answer["generation"] == 3
    assert "the journal cannot be written" in answer["error"]
    assert parts.phase() == HandoffPhase.IDLE and parts.handoff.helper_pid is None
    assert parts.handoff.last_result == {"state": "failed", "from_generation": 3, "error": answer["error"]}


@pytest.mark.parametrize("state", [MasterState.DRAINING, MasterState.STOPPING])
def test_no_replacement_of_a_master_that_is_stopping(parts: Replacing, state: MasterState) -> None:
    parts.master.state = state
    assert not parts.handoff.begin()
    assert parts.phase() == HandoffPhase.IDLE
    answer = parts.handoff.request_reload()  # `phoenix reload`: the true reason, not "already in progress"
    assert answer["ok"] is False and answer["error"].startswith(f"the master is {state}: it is replaced only")


def test_no_replacement_of_an_app_object_says_why(parts: Replacing) -> None:
    parts.master.app_spec = None
    answer = parts.handoff.request_reload()
    assert answer["ok"] is False and answer["error"] == "this master runs an app object, not an app path"


def test_one_replacement_at_a_time(parts: Replacing) -> None:
    parts.callbacks_busy = True  # (so that the preflight's pass execs nothing)
    assert parts.handoff.begin()
    assert parts.handoff.request_reload() == {"ok": False, "generation": 3,
                                              "error": "a replacement is already in progress"}
    parts.preflight_exits()


def test_a_failed_preflight_ends_the_replacement_and_says_why(parts: Replacing) -> None:
    parts.master.app_spec = "tests.apps.no_such_module:app"
    assert parts.handoff.begin()
    assert parts.phase() == HandoffPhase.PREFLIGHT
    parts.preflight_exits()
    assert parts.phase() == HandoffPhase.IDLE and parts.owed_runs == 1
    result = parts.handoff.last_result
    assert result is not None and result["state"] == "failed"
    assert result["error"].startswith("preflight `phoenix check tests.apps.no_such_module:app` failed with exit code")
    assert "no_such_module" in result["error"].partition("\n")[2]  # its own output, read from its pipe


def test_a_preflight_past_reload_timeout_is_killed_then_and_not_before(parts: Replacing) -> None:
    assert parts.handoff.begin()
    parts.clock.advance(19.999)
    parts.handoff.enforce_deadline()
    assert not parts.handoff.timed_out
    parts.clock.advance(0.001)
    parts.handoff.enforce_deadline()
    assert parts.handoff.timed_out
    parts.preflight_exits()  # killed, or ended by itself just before: overdue all the same
    assert parts.phase() == HandoffPhase.IDLE
    result = parts.handoff.last_result
    assert result is not None and "did not finish within 20.0 s (reload_timeout)" in result["error"]


def test_a_passed_preflight_waits_for_running_callbacks_and_for_the_journal(parts: Replacing) -> None:
    parts.callbacks_busy = True
    assert parts.handoff.begin()
    assert os.waitstatus_to_exitcode(parts.preflight_exits()) == 0
    assert parts.phase() == HandoffPhase.WAITING_CALLBACKS
    parts.handoff.continue_when_quiet()  # a callback still runs: no exec yet
    assert parts.phase() == HandoffPhase.WAITING_CALLBACKS
    parts.callbacks_busy = False
    parts.outage.failed(OSError(28, "No space left on device"), "record")  # began after the reload did
    parts.handoff.continue_when_quiet()
    assert parts.phase() == HandoffPhase.IDLE and parts.owed_runs == 1
    result = parts.handoff.last_result
    assert result is not None and result["error"].startswith("the journal cannot be written")
