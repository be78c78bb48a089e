"""One turn of the loop in-process, on a fake clock: the loop sleeps until the
earliest deadline and wakes at that fake moment, or at once for a descriptor
with something to read (its callback runs, the clock has not moved); a hung
child's liveness check comes due on the turn that reaches it, and not on the
one before."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest

from phoenix.config import Config
from phoenix.master.attempts import Attempt, AttemptTable
from phoenix.master.hangs import HangKiller
from phoenix.master.loop import Loop
from phoenix.master.metrics import Counters
from phoenix.rules.states import KillReason
from phoenix.testing import FakeClock


class Linked:
    accept_short_since: float | None = None

    def has_link(self, pid: int) -> bool:
        return True


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop(FakeClock())
    loop.open()
    yield loop
    loop.selector.close()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_turn_with_nothing_ready_wakes_at_the_deadline(loop: Loop) -> None:
    start = loop.clock.monotonic()
    began, woke, ready = loop.wait(start + 2.5)
    assert (began, woke, ready) == (start, start + 2.5, [])


def test_a_ready_descriptor_wakes_the_turn_at_once_and_its_callback_runs(loop: Loop) -> None:
    left, right = socket.socketpair()
    with left, right:
        heard: list[bytes] = []
        loop.watch(left, lambda: heard.append(left.recv(100)))
        right.send(b"beat")
        start = loop.clock.monotonic()
        _began, woke, ready = loop.wait(start + 60.0)
        assert woke == start  # not a tick of the deadline slept
        for on_ready in ready:
            on_ready()
        assert heard == [b"beat"]
        loop.unwatch(left)
        right.send(b"unheard")
        assert loop.wait(start + 1.0)[2] == []


def test_a_subprocess_exit_goes_to_whoever_started_it(loop: Loop) -> None:
    exits: list[int] = []
    loop.subprocesses[4_200_000] = exits.append
    assert loop.subprocess_exited(4_200_000, 256) and exits == [256]
    assert not loop.subprocess_exited(4_200_000, 256)  # once


def test_a_hung_child_is_killed_on_the_turn_that_reaches_its_deadline(
        loop: Loop, child: subprocess.Popen[bytes]) -> None:
    config = Config(heartbeat_timeout=5.0, kill_grace=2.0)
    attempts = AttemptTable()
    hangs = HangKiller(attempts, loop, lambda: config, Counters(), Linked(), lambda: None, lambda: False)
    now = loop.clock.monotonic()
    attempt = Attempt(1, 1, "k", "m:f", 1, child.pid, None, now, now, now)
    attempts.add(attempt)
    hangs.watch(attempt, now)
    clock = loop.clock
    assert isinstance(clock, FakeClock)
    heard: list[bytes] = []
    left, right = socket.socketpair()
    with left, right:
        loop.watch(left, lambda: heard.append(left.recv(100)))
        clock.advance(3.0)
        right.send(b"something else to do")  # a turn before the deadline
        deadline = loop.timers.next_deadline()
        assert deadline == now + 5.0
        _began, woke, ready = loop.wait(deadline)
        for on_ready in ready:
            on_ready()
        hangs.run_due_timers(woke)
        assert woke == now + 3.0 and attempt.kill_reason is None
        _began, woke, ready = loop.wait(deadline)  # nothing else: it sleeps until the check
        hangs.run_due_timers(woke)
        assert woke == now + 5.0 and attempt.kill_reason == KillReason.HEARTBEAT_TIMEOUT
    assert child.wait(timeout=5) == -signal.SIGTERM
