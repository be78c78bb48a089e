"""Doubles for testing Phoenix's parts, and apps built on Phoenix, in-process.

Every part of the master reads time from the one `Clock` it is handed
(phoenix.linux.clock), so a test hands in a `FakeClock` and moves it by hand:
a timeout fires at the fake moment it is due, and not a tick before, with
no sleep and no wait for a real clock.

    clock = FakeClock()
    deadline = clock.monotonic() + 5.0
    clock.advance(4.9)      # not due yet
    clock.advance(0.1)      # due now: clock.monotonic() == deadline

Like trio.testing.MockClock, a FakeClock only moves when a test moves it
(its rate is 0), never backwards; `wait` with `autojump` jumps to the
deadline the loop asked to sleep until when nothing is ready, so a loop
turn that would block returns at once at the moment it would have woken.
Both of its clocks (monotonic and since-boot) move together.

`FakeSpawner` stands in for the spawner where a part takes waiting
children (the scheduler) or hears of exits the fork server reaped (the
reaper): it forks nothing, hands out waiting children whose order pipes the
test reads, and reports the exits a test makes up.

`MemoryStore` (phoenix.store.memory) is the store interface in memory: it
passes the same contract suite as the SQLite and PostgreSQL stores
(tests/store/test_contract.py), takes a `now=` clock, and lets a test of
code that drives a `Store` (submits, claims, records outcomes) run without
a file or a server. Apps submit through `phoenix.App`/`phoenix.Client`,
which open the configured store; to test an app's jobs and callbacks
end to end, run a real master on a temporary state directory (it starts in
well under a second) rather than a fake.
"""

from __future__ import annotations

import math
import os
import selectors

from phoenix.linux.clock import Clock
from phoenix.master.spawner import WaitingChild
from phoenix.store.memory import MemoryStore

__all__ = ["FakeClock", "FakeSpawner", "MemoryStore"]


class FakeClock(Clock):
    """A clock that moves only when told (`advance`), for deterministic timeouts."""

    def __init__(self, start: float = 1000.0, *, boot_offset: float = 50_000.0, autojump: bool = True) -> None:
        """`start`: its monotonic reading; since_boot() reads `boot_offset`
        more. `autojump`: wait() jumps to the deadline it was given when
        nothing is ready, as a real wait would have slept until it."""
        self._now = start
        self._boot_offset = boot_offset
        self.autojump = autojump

    def monotonic(self) -> float:
        return self._now

    def since_boot(self) -> float:
        return self._now + self._boot_offset

    def advance(self, seconds: float) -> None:
        """Move both clocks `seconds` forward (never back: a monotonic clock does not)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a clock moves by a finite number of seconds, 0 or more (not {seconds})")
        self._now += seconds

    def wait(self, selector: selectors.BaseSelector, timeout: float) -> list[tuple[selectors.SelectorKey, int]]:
        """What is ready now, without blocking; nothing ready: with `autojump`,
        the clock jumps `timeout` ahead (the moment the real wait would end)."""
        ready = selector.select(0)
        if not ready and self.autojump and math.isfinite(timeout):
            self.advance(max(0.0, timeout))
        return ready


class FakeSpawner:
    """Hands out waiting children that are no process: each is a real
    WaitingChild whose order pipe the test holds the other end of
    (`order_for(pid)` reads the order it was sent). `fail_with` makes take()
    raise (a fork the system refuses: EAGAIN, ENOMEM) as the real spawner
    does; `dead_on_arrival` makes the next child one that died waiting (its
    order cannot be delivered). Pids start high, far from any real child."""

    def __init__(self, first_pid: int = 4_000_000) -> None:
        self.next_pid = first_pid
        self.ready: list[WaitingChild] = []  # given back: the next take() hands them out first
        self.taken: list[WaitingChild] = []
        self.asked_ahead: list[int] = []  # each take()'s `ahead`: the children the caller meant to take next
        self.fail_with: OSError | None = None
        self.dead_on_arrival = False
        self._order_ends: dict[int, int] = {}  # pid -> the read end of its order pipe
        self._reports: list[tuple[int, int, int]] = []
        self._server_lost = False

    def report_exit(self, pid: int, status: int, max_rss_kb: int = 0) -> None:
        """As the fork server reports the exit of a child it forked (a wait status)."""
        self._reports.append((pid, status, max_rss_kb))

    def lose_server(self) -> None:
        """As a fork server that died: exits it reaped may never have been reported."""
        self._server_lost = True

    def take_reports(self) -> list[tuple[int, int, int]]:
        reports, self._reports = self._reports, []
        return reports

    def take_server_lost(self) -> bool:
        lost, self._server_lost = self._server_lost, False
        return lost

    def take(self, ahead: int = 0) -> WaitingChild:
        self.asked_ahead.append(ahead)
        if self.fail_with is not None:
            raise self.fail_with
        if self.ready:
            waiting = self.ready.pop(0)
        else:
            read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            waiting = WaitingChild(self.next_pid, start_time=self.next_pid, order_fd=write_end)
            self.next_pid += 1
            if self.dead_on_arrival:
                os.close(read_end)  # the child is gone: the order's write fails (EPIPE)
            else:
                self._order_ends[waiting.pid] = read_end
        self.taken.append(waiting)
        return waiting

    def give_back(self, waiting: WaitingChild) -> None:
        self.ready.insert(0, waiting)

    def order_for(self, pid: int) -> bytes:
        """The order the child `pid` was sent (b"" if none was)."""
        fd = self._order_ends.pop(pid)
        try:
            return os.read(fd, 1 << 20)
        except BlockingIOError:
            return b""
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close every pipe end still held (children given no order)."""
        for waiting in self.ready:
            os.close(waiting.order_fd)
        self.ready.clear()
        for fd in self._order_ends.values():
            os.close(fd)
        self._order_ends.clear()
