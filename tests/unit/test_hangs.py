"""The hang killer in-process, on a fake clock: a child silent past its
heartbeat_timeout is killed at that fake moment and not a tick before; a
beat, or one waiting to be read, moves the deadline; KILL follows TERM after
kill_grace. The child is a real process (a `sleep` in its own group), so the
signals are real; only time is fake."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from phoenix.app import JobSpec
from phoenix.config import Config
from phoenix.master.attempts import Attempt, AttemptTable
from phoenix.master.hangs import HangKiller
from phoenix.master.loop import Loop
from phoenix.master.metrics import Counters
from phoenix.rules.states import KillReason, TimerKind
from phoenix.testing import FakeClock


@dataclass
class Links:
    accept_short_since: float | None = None
    linked: bool = True

    def has_link(self, pid: int) -> bool:
        return self.linked


class Parts:
    """A hang killer and what it is handed, with one attempt running a real child."""

    def __init__(self, child: subprocess.Popen[bytes], spec: JobSpec | None = None) -> None:
        self.clock = FakeClock()
        self.loop = Loop(self.clock)
        self.config = Config(heartbeat_timeout=5.0, kill_grace=2.0)
        self.attempts = AttemptTable()
        self.counters = Counters()
        self.links = Links()
        self.reads = 0
        self.beat_waiting = False  # a beat queued on the connection, read by read_heartbeats
        self.socket_was_gone = False
        self.hangs = HangKiller(self.attempts, self.loop, lambda: self.config, self.counters, self.links,
                                self.read_heartbeats, lambda: self.socket_was_gone)
        now = self.clock.monotonic()
        self.attempt = Attempt(1, 1, "job", "m:f", 1, child.pid, spec, now, now, now)
        self.attempts.add(self.attempt)
        self.hangs.watch(self.attempt, now)

    def read_heartbeats(self) -> None:
        self.reads += 1
        if self.beat_waiting:
            self.attempt.last_beat = self.clock.monotonic()
            self.beat_waiting = False

    def at(self, seconds: float) -> None:
        """Move to `seconds` after the attempt started, and run the timers due."""
        self.clock.advance(self.attempt.started + seconds - self.clock.monotonic())
        self.hangs.run_due_timers(self.clock.monotonic())

    def beating(self, first: int, end: int, progress: bool = False) -> None:
        """A beat (and with `progress`, progress) each second from `first` to `end` (not included)."""
        for second in range(first, end):
            self.attempt.last_beat = self.clock.monotonic()
            if progress:
                self.attempt.last_progress = self.attempt.last_beat
            self.at(float(second))


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)  # its own group, as a job's
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_silent_child_is_killed_at_its_heartbeat_timeout_and_not_before(child: subprocess.Popen[bytes]) -> None:
    parts = Parts(child)
    parts.at(4.999)
    assert parts.attempt.kill_reason is None and child.poll() is None
    parts.at(5.0)
    assert parts.attempt.kill_reason == KillReason.HEARTBEAT_TIMEOUT
    assert parts.attempt.kill_detail == "heartbeat_timeout: 5.00 s"
    assert parts.counters.kills == {"heartbeat_timeout": 1}
    assert child.wait(timeout=5) == -signal.SIGTERM
    # KILL is due kill_grace after the TERM.
    assert [(t.when - parts.attempt.started, t.kind) for t in parts.loop.timers.pause()] == [(7.0, TimerKind.KILL)]


def test_a_beat_moves_the_deadline(child: subprocess.Popen[bytes]) -> None:
    parts = Parts(child)
    parts.at(4.0)
    parts.attempt.last_beat = parts.clock.monotonic()  # as the intake notes a beat
    parts.at(8.999)
    assert parts.attempt.kill_reason is None
    parts.at(9.0)
    assert parts.attempt.kill_reason == KillReason.HEARTBEAT_TIMEOUT


def test_a_beat_waiting_on_the_connection_is_read_before_the_child_is_judged_silent(
        child: subprocess.Popen[bytes]) -> None:
    parts = Parts(child)
    parts.beat_waiting = True
    parts.at(5.0)
    assert parts.reads == 1 and parts.attempt.kill_reason is None
    parts.at(10.0)
    assert parts.attempt.kill_reason == KillReason.HEARTBEAT_TIMEOUT


def test_a_job_s_own_heartbeat_timeout_wins_over_the_app_s(child: subprocess.Popen[bytes]) -> None:
    parts = Parts(child, JobSpec("m:f", print, heartbeat_timeout=2.0))
    parts.at(1.999)
    assert parts.attempt.kill_reason is None
    parts.at(2.0)
    assert parts.attempt.kill_reason == KillReason.HEARTBEAT_TIMEOUT


def test_max_runtime_kills_a_child_that_beats(child: subprocess.Popen[bytes]) -> None:
    parts = Parts(child, JobSpec("m:f", print, max_runtime=12.0))
    parts.beating(1, 12, progress=True)
    assert parts.attempt.kill_reason is None
    parts.attempt.last_beat = parts.clock.monotonic()
    parts.at(12.0)
    assert parts.attempt.kill_reason == KillReason.MAX_RUNTIME


def test_a_job_blocked_in_checkpoint_by_the_masters_journal_is_not_stall_killed(
        child: subprocess.Popen[bytes]) -> None:
    # Its checkpoint waits for a journal that would not take it (a full disk):
    # the job makes no progress through no fault of its own, beating all along.
    parts = Parts(child, JobSpec("m:f", print, stall_timeout=4.0))
    parts.attempt.wait_on_master(parts.clock.monotonic())
    parts.beating(1, 21)
    assert parts.attempt.kill_reason is None
    # Acknowledged at last: its stall clock starts again then, and stalled after that, it is killed.
    parts.attempt.master_answered(parts.clock.monotonic())
    parts.beating(21, 24)
    assert parts.attempt.kill_reason is None
    parts.attempt.last_beat = parts.clock.monotonic()
    parts.at(24.0)
    assert parts.attempt.kill_reason == KillReason.STALL_TIMEOUT


def test_a_wait_on_the_masters_journal_does_not_count_against_max_runtime(child: subprocess.Popen[bytes]) -> None:
    # Found from outside: a 6 s job with max_runtime=10 was killed at 10 s, its
    # checkpoint having waited 12 s on a full disk, and charged a retry.
    parts = Parts(child, JobSpec("m:f", print, max_runtime=10.0))
    parts.beating(1, 3, progress=True)
    parts.attempt.wait_on_master(parts.clock.monotonic())  # blocked at 2 s, for 12 s
    parts.beating(3, 15)
    parts.attempt.master_answered(parts.clock.monotonic())
    parts.beating(15, 22, progress=True)  # 2 s before the wait and 7 after: 9 s of its own
    assert parts.attempt.kill_reason is None
    parts.attempt.last_beat = parts.clock.monotonic()
    parts.at(22.0)
    assert parts.attempt.kill_reason == KillReason.MAX_RUNTIME


def test_silence_while_the_socket_file_was_gone_is_not_the_child_s(child: subprocess.Popen[bytes]) -> None:
    parts = Parts(child)
    parts.socket_was_gone = True  # put back, and every child given grace (statefiles)

    def grace() -> bool:
        parts.attempt.fresh_grace(parts.clock.monotonic())
        return True

    parts.hangs.heartbeat_socket_restored = grace
    parts.at(5.0)
    assert parts.attempt.kill_reason is None and child.poll() is None


def test_a_child_whose_connection_may_wait_in_the_backlog_is_looked_at_again(
        child: subprocess.Popen[bytes]) -> None:
    parts = Parts(child)
    parts.links.linked = False
    parts.links.accept_short_since = parts.clock.monotonic()  # out of descriptors to accept with
    parts.at(5.0)
    assert parts.attempt.kill_reason is None
    parts.links.accept_short_since = None
    parts.at(6.0)  # BACKLOG_RECHECK later, and the master can accept again: silent after all
    assert parts.attempt.kill_reason == KillReason.HEARTBEAT_TIMEOUT


def test_kill_follows_term_after_kill_grace() -> None:
    child_ignoring_term = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                                            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint(flush=True)\n"
                                            "time.sleep(60)"], start_new_session=True, stdout=subprocess.PIPE)
    try:
        assert child_ignoring_term.stdout is not None
        child_ignoring_term.stdout.readline()  # TERM is ignored from here on
        parts = Parts(child_ignoring_term)
        parts.hangs.interrupt(parts.attempt, parts.clock.monotonic(), "a stop")
        assert parts.attempt.interrupted and parts.attempt.kill_detail == "a stop"
        parts.at(1.999)
        assert child_ignoring_term.poll() is None
        parts.at(2.0)
        assert child_ignoring_term.wait(timeout=5) == -signal.SIGKILL
    finally:
        if child_ignoring_term.poll() is None:
            child_ignoring_term.kill()
        child_ignoring_term.wait()


@pytest.mark.parametrize("final_first", [False, True])
def test_a_stop_remembers_whether_the_attempts_final_had_come_at_its_first_term(
        child: subprocess.Popen[bytes], final_first: bool) -> None:
    """What rules/outcomes.classify needs to tell the stop's doing from the job's own outcome."""
    parts = Parts(child)
    if final_first:
        parts.attempt.final = {"k": "failed", "error": "its own"}
    parts.hangs.interrupt(parts.attempt, parts.clock.monotonic())
    assert child.wait(timeout=5) == -signal.SIGTERM
    parts.attempt.final = {"k": "failed", "error": "the job called sys.exit(143)"}  # on its way out
    parts.hangs.interrupt(parts.attempt, parts.clock.monotonic())  # a second stop (a drain, then stop)
    assert parts.attempt.interrupted and parts.attempt.final_before_stop == final_first
