"""What the master's one thread shares, built first and handed to each part:
the clock, the selector (descriptors and what to call when one is ready),
the timer heap (liveness checks and kills), and the subprocesses whose exit
the reaper hands back to whoever started them (the fork server, the spare,
the preflight, a new master in fork mode).

A part that watches a descriptor, sets a timer or starts a subprocess does
it here, not through the master; the master only turns the loop."""

from __future__ import annotations

import selectors
from typing import Any, Callable

from phoenix.linux.clock import Clock
from phoenix.master.timers import TimerHeap


class Loop:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.timers = TimerHeap()
        self.subprocesses: dict[int, Callable[[int], None]] = {}  # pid -> on_exit(status)
        self._selector: selectors.BaseSelector | None = None

    def open(self) -> None:
        """Make the selector: after start-up closed the descriptors an earlier image leaked."""
        self._selector = selectors.DefaultSelector()

    @property
    def selector(self) -> selectors.BaseSelector:
        assert self._selector is not None, "Loop.open() makes the selector"
        return self._selector

    def watch(self, fileobj: Any, on_ready: Callable[[], None]) -> None:
        """Call `on_ready` each turn `fileobj` (a descriptor or an object with fileno()) has something to read."""
        self.selector.register(fileobj, selectors.EVENT_READ, on_ready)

    def unwatch(self, fileobj: Any) -> None:
        self.selector.unregister(fileobj)

    def wait(self, deadline: float) -> tuple[float, float, list[Callable[[], None]]]:
        """Sleep until `deadline` or until something is ready: (when the wait
        began, when it ended, what to call for what is ready)."""
        began = self.clock.monotonic()
        ready = self.clock.wait(self.selector, max(0.0, deadline - began))
        return began, self.clock.monotonic(), [key.data for key, _mask in ready]

    def subprocess_exited(self, pid: int, status: int) -> bool:
        """Hand a subprocess's exit to whoever started it; False: not one of ours."""
        on_exit = self.subprocesses.pop(pid, None)
        if on_exit is None:
            return False
        on_exit(status)
        return True
