"""Time that the wall clock cannot move, for durations that must survive a
restart of the master (an attempt's age, a retry's backoff).

time.time() jumps with every clock step (NTP, an operator's `date -s`, a VM
resumed): a +1 h step made an adopted attempt look an hour old and killed it
for max_runtime. time.monotonic() does not survive the process. CLOCK_BOOTTIME
counts seconds since boot, never steps, keeps counting through suspend, and
is the base of the start times in /proc/PID/stat; it restarts at each boot,
so a stored value is paired with the boot id it was taken under. Wall time
is kept for display only.

Every deadline and duration of the master goes through one `Clock`, built
first and handed to each part, so that a test can hand in a clock it moves
by hand (phoenix.testing.FakeClock) and see a timeout fire at the right
moment without waiting for it.
"""

from __future__ import annotations

import os
import selectors
import time

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_boot_id: str | None = None


class Clock:
    """The time a part reads: `monotonic()` for deadlines and durations within
    this process, `since_boot()` for moments stored across a restart."""

    def monotonic(self) -> float:
        return time.monotonic()

    def since_boot(self) -> float:
        return since_boot()

    def wait(self, selector: selectors.BaseSelector, timeout: float) -> list[tuple[selectors.SelectorKey, int]]:
        """Sleep on `selector` for at most `timeout` seconds: the loop's one wait."""
        return selector.select(timeout)


SYSTEM = Clock()  # the real clock: what every part gets unless a test hands in another


def since_boot() -> float:
    """Seconds since this boot (CLOCK_BOOTTIME)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    """This boot's id: a stored boot-time value from another boot means nothing."""
    global _boot_id
    if _boot_id is None:
        with open("/proc/sys/kernel/random/boot_id") as f:
            _boot_id = f.read().strip()
    return _boot_id


def after(delay: float) -> tuple[float, str]:
    """(boot-time seconds, boot id) `delay` seconds from now, to store."""
    return since_boot() + delay, boot_id()


def seconds_until(when: float, when_boot_id: str | None) -> float:
    """How long until a stored (boot-time, boot id) moment; 0 if it has
    passed, or if it was stored under another boot (the machine restarted
    since: whatever waited is due)."""
    if when_boot_id != boot_id():
        return 0.0
    return max(0.0, when - since_boot())


def age(started: float | None, process_start_ticks: int | None, now: float | None = None) -> float:
    """Seconds since an attempt started, from its stored boot-time start or,
    for a journal written before that was stored, from its process's start
    time in /proc (clock ticks since boot; the process may have been forked
    a little ahead of its attempt, as a spare child is). Both are of this
    boot: only a live process of the attempt is ever aged. `now`: seconds
    since boot (a Clock's since_boot()), read here if not given."""
    now = since_boot() if now is None else now
    if started is not None:
        return max(0.0, now - started)
    if process_start_ticks is not None:
        return max(0.0, now - process_start_ticks / _TICKS_PER_SECOND)
    return 0.0
