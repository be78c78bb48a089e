"""The ticker: the master's part for work over time.

- Delayed jobs: scheduled jobs whose due time (wall clock UTC, in the store)
  has come become pending (`promote_due`, one indexed statement), and the
  scheduler is woken to start them. Between looks the loop sleeps on
  monotonic time until the earliest due time, read from the store's
  jobs_scheduled index: never a look per job. It reads that time again at
  least every REREAD seconds (one index entry), so that a wall-clock step,
  or a delayed job submitted without a wake-up (App.submit from a script
  wakes no master), is seen within that: a step moves when a job becomes
  due, never how often (the state changes once). A submit that wakes the
  master (the control socket's wake, a shared store's NOTIFY) makes it read
  at once.
- Periodic jobs: for each `@app.periodic` schedule, the ticks that are due
  (rules/schedule.py) are inserted as ordinary jobs keyed
  `<target>@<tick UTC>`. Every master sharing the store does the same, and
  the key's uniqueness makes it exactly one job per tick: no leader, no
  double fire. Where the previous tick's job has not ended, overlap="skip"
  skips the tick (logged, counted).

What a tick is, and which missed ticks run, depends only on the schedule,
the store's last tick of it and the wall clock: a new image (USR2), another
master or a restart after a crash computes the same ticks.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

from phoenix import log
from phoenix.app import App, encode_params
from phoenix.linux.clock import SYSTEM, Clock
from phoenix.master.metrics import Counters
from phoenix.rules.schedule import (
    OVERLAP_SKIP,
    Schedule,
    latest_ticks,
    may_fire,
    next_tick,
    tick_iso,
    tick_key,
    ticks_to_fire,
)
from phoenix.rules.states import MasterState
from phoenix.store.base import KeyConflict, Store

REFRESH = 1.0  # seconds: the longest the master goes without comparing the earliest due time with the wall clock
REREAD = 1.0  # seconds: the longest it goes without reading the earliest due time from the store
PROMOTE_BATCH = 1000  # a shared store promotes at most this many per statement: then it looks again at once


class Ticker:
    """Handed what it uses: the store, the app (None: degraded), the
    master's state, the counters, the scheduler's wake-up, the master's
    clock (monotonic time) and the wall clock (a test passes its own)."""

    def __init__(self, journal: Callable[[], Store], app: App | None, state: Callable[[], MasterState],
                 counters: Counters, wake_scheduler: Callable[[], None], clock: Clock = SYSTEM,
                 wall: Callable[[], float] = time.time) -> None:
        self.journal, self.app, self.state, self.counters = journal, app, state, counters
        self.wake_scheduler = wake_scheduler
        self.clock = clock
        self.wall = wall
        self.due = 0.0  # monotonic: the next look
        self.earliest: float | None = None  # wall clock: the earliest scheduled job's due time, as last read
        self.read_due = 0.0  # monotonic: read it from the store then (0: at the next look)
        self.considered: dict[str, float | None] = {}  # target -> the latest tick decided on (None: none yet)
        self.next_at: dict[str, float] = {}  # target -> its next tick (wall clock): nothing to compute before it

    def wake(self) -> None:
        """A job was submitted (it may be due sooner than the earliest known): read on the next turn."""
        self.due = self.read_due = 0.0

    def next_deadline(self) -> float:
        return self.due

    def run_if_due(self) -> None:
        state = self.state()
        if self.clock.monotonic() < self.due or state not in (MasterState.RUNNING, MasterState.DEGRADED):
            return
        journal = self.journal()
        now = self.clock.monotonic()
        self.due = now + REFRESH  # (first: a storage error below does not make us spin)
        wall = self.wall()
        if now >= self.read_due or (self.earliest is not None and self.earliest <= wall):
            promoted = journal.promote_due()
            if promoted:
                self.wake_scheduler()
            self.earliest = journal.next_scheduled_at()
            self.read_due = 0.0 if promoted >= PROMOTE_BATCH else now + REREAD
        upcoming = [] if self.earliest is None else [self.earliest]
        if self.app is not None and state == MasterState.RUNNING:  # degraded: no code, no schedules
            for schedule in self.app.schedules.values():
                if wall >= self.next_at.get(schedule.target, -math.inf):
                    self.next_at[schedule.target] = self.fire(journal, schedule, wall)
                upcoming.append(self.next_at[schedule.target])
        if self.read_due == 0.0:
            self.due = now  # more were due than one statement promotes
        elif upcoming:
            wait = min(upcoming) - self.wall()
            self.due = self.clock.monotonic() + min(max(wait, 0.0), REFRESH)

    def fire(self, journal: Store, schedule: Schedule, wall: float) -> float:
        """Insert the schedule's due ticks; returns its next tick (wall clock)."""
        target = schedule.target
        if target not in self.considered:  # first look of this image: from the store's last tick (catch-up)
            last = journal.last_tick(target)
            self.considered[target] = None if last is None else last[0]
        inserted = False
        for tick in ticks_to_fire(schedule, self.considered[target], wall):
            if schedule.overlap == OVERLAP_SKIP:  # (one indexed read per tick)
                previous = journal.last_tick(target, before=tick)
                if not may_fire(schedule, None if previous is None else previous[1]):
                    self.counters.count(self.counters.ticks, "skipped")
                    log.event(logging.WARNING, "tick_skipped", target=target, tick=tick_iso(tick),
                              reason=f"the previous tick's job is {previous[1] if previous else '?'} (overlap=skip)")
                    continue
            try:
                _job_id, created = journal.submit(target, encode_params(schedule.params), tick_key(target, tick),
                                                    run_at=tick, tick=tick)
            except KeyConflict as exc:
                # Taken with other parameters: a master of another release (a rolling deploy)
                # inserted it first, or a job was submitted under the key. Once all the same.
                self.counters.count(self.counters.ticks, "taken")
                log.event(logging.WARNING, "tick_taken_otherwise", target=target, tick=tick_iso(tick),
                          error=str(exc))
                continue
            self.counters.count(self.counters.ticks, "inserted" if created else "taken")
            inserted = inserted or created
            log.event(logging.INFO, "tick", target=target, tick=tick_iso(tick),
                      job=tick_key(target, tick), created=created)
        latest = latest_ticks(schedule, None, wall, 1)
        if latest:
            decided = self.considered[target]
            self.considered[target] = latest[0] if decided is None else max(decided, latest[0])
        if inserted:
            self.wake_scheduler()
        return next_tick(schedule, wall)
