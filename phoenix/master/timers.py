"""The master's deadlines: one heap of named timers.

A beat only moves an attempt's `last_beat` (O(1)); each attempt has one
pending liveness check on the heap that re-arms itself when it comes due
(O(log n)), so no tick ever scans every child."""

from __future__ import annotations

import heapq
import itertools
from typing import Iterator, NamedTuple

from phoenix.rules.states import TimerKind


class Timer(NamedTuple):
    when: float  # monotonic
    seq: int  # ties break in the order timers were set
    kind: TimerKind
    pid: int
    attempt_id: int  # with the pid: a timer of an attempt that has ended names nobody


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, kind: TimerKind, pid: int, attempt_id: int) -> None:
        heapq.heappush(self._heap, Timer(when, next(self._seq), kind, pid, attempt_id))

    def next_deadline(self) -> float | None:
        return self._heap[0].when if self._heap else None

    def pop_due(self, now: float) -> Iterator[Timer]:
        """Each timer due at `now`, earliest first; timers pushed meanwhile
        that are already due come out in the same sweep."""
        while self._heap and self._heap[0].when <= now:
            yield heapq.heappop(self._heap)

    def pause(self) -> list[Timer]:
        """Take every timer off (fork mode: the new master judges the children now)."""
        paused, self._heap = self._heap, []
        return paused

    def resume(self, timers: list[Timer]) -> None:
        self._heap.extend(timers)
        heapq.heapify(self._heap)
