"""What an attempt's end means, and when a job runs again.

Outcomes (the `outcome` of an attempt and of its job in `phoenix status`):
    finished     the job returned; its result is recorded
    error        the job raised (traceback) or returned something unusable
    killed       Phoenix killed it; reason heartbeat_timeout | stall_timeout | max_runtime
    crashed      died of a fatal signal of its own (SIGSEGV, SIGABRT, SIGBUS, ...)
    signalled    killed by a signal someone else sent (an outside SIGKILL or SIGTERM)
    exited       left with an exit code and no outcome (os._exit(3), sys.exit in a thread)
    lost         gone while no master watched, with no outcome in the outbox
    interrupted  stopped by `phoenix stop` / TERM; the job goes back to pending
"""

from __future__ import annotations

import collections
import os
import random
import signal
import time

# Signals a process raises against itself when it breaks.
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGSYS, signal.SIGTRAP}


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def classify_exit(status: int) -> tuple[str, str]:
    """(outcome, reason) of a process that ended without an outcome message."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        outcome = "crashed" if signum in _CRASH_SIGNALS else "signalled"
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return outcome, f"{signal_name(signum)}{core}"
    code = os.WEXITSTATUS(status)
    return "exited", f"exit code {code}"


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(n-1))]
    so that jobs failing together do not retry together."""
    if base <= 0:
        return 0.0
    return random.uniform(0, min(cap, base * 2 ** max(failures - 1, 0)))


class RestartBudget:
    """Erlang-style restart intensity: at most `intensity` re-runs in any
    `period` seconds, master-wide. Past that, re-runs wait for the window to
    move rather than being dropped, so a crash loop cannot become a fork bomb
    and nothing is lost."""

    def __init__(self, intensity: int, period: float) -> None:
        self.intensity = intensity
        self.period = period
        self.recent: collections.deque[float] = collections.deque()

    def next_slot(self, now: float | None = None) -> float:
        """Book a re-run; returns the monotonic time before which it must not start."""
        now = time.monotonic() if now is None else now
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
