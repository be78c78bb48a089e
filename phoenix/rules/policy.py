"""When a job runs again: retries, backoff, the restart budget, the slot gate.

Pure decisions: tests/unit/test_policy.py checks them without processes."""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass

from phoenix.rules.states import HandoffPhase, MasterState, Outcome


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(n-1))]
    so that jobs failing together do not retry together."""
    if base <= 0:
        return 0.0
    return (rng or random).uniform(0, min(cap, base * 2 ** max(failures - 1, 0)))


@dataclass(frozen=True, slots=True)
class Next:
    """What becomes of a job after one of its attempts ended."""

    job_state: str  # finished | pending | failed | cancelled
    counts_as_failure: bool
    delay: float  # seconds before it may run again (pending only)
    callback: str | None  # on_finished | on_failed | None
    # When the restart budget, not the backoff, holds the re-run: how many
    # re-runs it holds ahead of this one (None: the backoff decides).
    queued_behind: int | None = None


def after_attempt(outcome: Outcome, failures: int, retries: int | None, *, budget: "RestartBudget", now: float,
                  backoff_base: float, backoff_cap: float, rng: random.Random | None = None) -> Next:
    """`failures`: the job's failed attempts before this one. `retries`: the
    job's policy, or None when it is not known here (a degraded master with no
    app loaded): then the job goes back to pending, and the first master that
    knows the policy decides before it runs it again (`may_run`). A re-run
    books a place in the restart budget (monotonic `now`) and waits for the
    later of its backoff and that place."""
    if outcome == Outcome.FINISHED:
        return Next("finished", False, 0.0, "on_finished")
    if outcome == Outcome.INTERRUPTED:  # stopped by the operator: not the job's failure
        return Next("pending", False, 0.0, None)
    if outcome == Outcome.CANCELLED:  # the operator's decision: never re-run, reported as a failure
        return Next("cancelled", False, 0.0, "on_failed")
    if retries is None:
        return Next("pending", True, 0.0, None)
    if failures + 1 > retries:
        return Next("failed", True, 0.0, "on_failed")
    backoff = backoff_delay(failures + 1, backoff_base, backoff_cap, rng)
    held = budget.next_slot(now) - now
    if held > backoff:
        return Next("pending", True, held, None, queued_behind=budget.waiting(now) - 1)
    return Next("pending", True, backoff, None)


def may_run(failures: int, retries: int) -> bool:
    """Whether a pending job still has a run left: false only for a job whose
    failures were recorded by a master that did not know its policy."""
    return failures <= retries


def may_start_jobs(state: MasterState, handoff: HandoffPhase, outage: bool, running: int, slots: int) -> bool:
    """The one slot gate: may the master start another job now?"""
    return (state == MasterState.RUNNING and not outage
            and handoff in (HandoffPhase.IDLE, HandoffPhase.PREFLIGHT) and running < slots)


class RestartBudget:
    """Erlang-style restart intensity: at most `intensity` re-runs in any
    `period` seconds, master-wide. Past that, re-runs wait for the window to
    move rather than being dropped, so a crash loop cannot become a fork bomb
    and nothing is lost."""

    def __init__(self, intensity: int, period: float) -> None:
        self.intensity = intensity
        self.period = period
        self.recent: collections.deque[float] = collections.deque()

    def next_slot(self, now: float) -> float:
        """Book a re-run; returns the monotonic time before which it must not start."""
        while self.recent and self.recent[0] <= now - self.period:
            self.recent.popleft()
        if self.intensity <= 0:
            return now
        if len(self.recent) < self.intensity:
            self.recent.append(now)
            return now
        # The window is full: this re-run goes in when the oldest one leaves it.
        slot = self.recent[-self.intensity] + self.period
        self.recent.append(slot)
        return slot

    def waiting(self, now: float) -> int:
        """Re-runs booked for later than `now`: those the budget holds back."""
        return sum(1 for slot in self.recent if slot > now)
