"""Time arithmetic of delayed and periodic jobs, with no clock of its own:
every function is given "now" (wall-clock seconds since the epoch, UTC).

- A delayed job's due time is wall time UTC (`due_time`): what the user
  asked for (`--at`), or submission time plus `--in`. The store keeps it; the
  master sleeps on monotonic time until the earliest one, and a job becomes
  due when the wall clock passes it, once (see docs/scheduling.md).
- A periodic schedule's ticks are instants (UTC seconds) computed from the
  schedule's own clock, never from when a master started: `every=S` ticks on
  the multiples of S seconds since the epoch; `cron=` ticks at the wall times
  its expression names in its zone. A wall time that does not exist (a DST
  gap) fires once at the first minute after the gap (Debian cron's rule,
  which cronsim follows); a wall time that exists twice (the repeated hour)
  fires once, at its first occurrence. Each tick is one job keyed
  `<target>@<tick ISO 8601 UTC>` (`tick_key`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from phoenix.errors import UsageError

OVERLAP_SKIP = "skip"
OVERLAP_ALLOW = "allow"
ACTIVE_STATES = frozenset({"scheduled", "pending", "running"})  # a tick's job that has not ended
# A due tick counts as on time (not missed) for this long after it, at most:
# a master that turns late by a loop's hiccup still fires it under catch_up=0.
ON_TIME = 60.0
_ISO_TICK = "%Y-%m-%dT%H:%M:%SZ"


class ScheduleError(UsageError, ValueError):
    """A schedule, a due time or a priority that cannot be used; the message
    says what is wrong and how to fix it (one line)."""


# -- delayed jobs and priorities --------------------------------------------------


# The farthest a due time may be asked for: further is a typo (an exponent, a
# unit), and beyond year 9999 the time cannot even be shown (`phoenix show`).
RUN_IN_MAX = 100 * 366 * 86400  # 100 years, in seconds
RUN_AT_MAX = datetime(9999, 1, 1, tzinfo=timezone.utc).timestamp()


def parse_in(value: Any) -> float:
    """Seconds from now, from `--in` or `run_in=`: a number from 0 to RUN_IN_MAX."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 <= seconds <= RUN_IN_MAX:
        raise ScheduleError(f"run in {value!r}: give a number of seconds, 0 or more and at most {RUN_IN_MAX} "
                            "(100 years), e.g. --in 90")
    return seconds


_ZONE_SUFFIX = re.compile(r"(Z|[+-]\d{2}:?\d{2})$", re.IGNORECASE)


def parse_at(value: Any) -> float:
    """Wall-clock seconds (UTC) of `--at` or `run_at=`: an ISO 8601 time
    with an offset or Z (a string), or an aware datetime. A time without
    one is refused: it would mean another instant on each host."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ScheduleError(f"run at {value.isoformat()}: the datetime has no time zone; give an aware one "
                                "(e.g. datetime(..., tzinfo=timezone.utc))")
        return _within_range(value.timestamp(), value.isoformat())
    if not isinstance(value, str):
        raise ScheduleError(f"run at {value!r}: give an ISO 8601 time with an offset, e.g. 2026-12-07T10:00:00+01:00")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ScheduleError(f"run at {value!r} is not an ISO 8601 time: write e.g. 2026-12-07T10:00:00+01:00 "
                            "or 2026-12-07T09:00:00Z") from None
    if parsed.tzinfo is None or not _ZONE_SUFFIX.search(text):
        raise ScheduleError(f"run at {value!r} has no offset: add one (+01:00) or Z for UTC, "
                            "e.g. 2026-12-07T10:00:00+01:00")
    return _within_range(parsed.timestamp(), value)


def _within_range(at: float, shown: str) -> float:
    """A due time from the epoch (1970: a time already past means now) to
    year 9999: outside, the stores' and the display's date arithmetic fails."""
    if not 0 <= at <= RUN_AT_MAX:
        raise ScheduleError(f"run at {shown!r} is out of range: give a time from 1970-01-01T00:00:00Z to "
                            "9998-12-31T23:59:59Z (a time already past means now)")
    return at


def due_time(now: float, run_in: Any = None, run_at: Any = None) -> float | None:
    """The wall time UTC a job is due, or None (due at once, no due time
    asked for). One of run_in and run_at at most; a time in the past is
    kept as it is (the job is due at once, and sorts by it)."""
    if run_in is not None and run_at is not None:
        raise ScheduleError("give run_in or run_at, not both (--in or --at)")
    if run_in is not None:
        return now + parse_in(run_in)
    if run_at is not None:
        return parse_at(run_at)
    return None


PRIORITY_MAX = 2**31 - 1  # a 32-bit column on both stores


def parse_priority(value: Any) -> int:
    """`--priority N` / `priority=N`: a whole number from 0 (the default) up; higher runs first."""
    if isinstance(value, bool):
        value = repr(value)  # True is not a priority
    try:
        priority = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        priority = None
    if priority is None or not 0 <= priority <= PRIORITY_MAX:
        raise ScheduleError(f"priority {value!r}: give a whole number from 0 to {PRIORITY_MAX} "
                            "(higher runs first; 0 is the default)")
    return priority


# -- periodic schedules -------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """One `@app.periodic(...)`: `every` seconds or a `cron` expression in `tz`."""

    target: str
    every: int | None = None
    cron: str | None = None
    tz: str = "UTC"
    params: Any = None
    catch_up: int = 1
    overlap: str = OVERLAP_SKIP
    zone: Any = field(default=None, compare=False, repr=False)  # the ZoneInfo of `tz`

    @property
    def description(self) -> str:
        return f"every {self.every}s" if self.every is not None else f"cron {self.cron!r} in {self.tz}"


def make_schedule(target: str, *, every: Any = None, cron: Any = None, tz: Any = None, params: Any = None,
                  catch_up: Any = 1, overlap: Any = OVERLAP_SKIP) -> Schedule:
    """A checked Schedule, or ScheduleError naming what to fix."""
    where = f"@app.periodic for {target}"
    if (every is None) == (cron is None):
        raise ScheduleError(f"{where}: give every=SECONDS or cron=\"EXPRESSION\" (one of them)")
    seconds: int | None = None
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not math.isfinite(every) \
                or every <= 0 or not float(every).is_integer():
            raise ScheduleError(f"{where}: every={every!r} must be a whole number of seconds above 0 (e.g. every=900)")
        seconds = int(every)
        if tz is not None:
            raise ScheduleError(f"{where}: tz= is for cron= schedules; every= ticks on UTC seconds")
    zone_name = "UTC" if tz is None else tz
    zone = _zone(where, zone_name)
    if cron is not None:
        if not isinstance(cron, str):
            raise ScheduleError(f"{where}: cron={cron!r} must be a string, e.g. cron=\"*/15 * * * *\"")
        _check_cron(where, cron, zone)
    if isinstance(catch_up, bool) or not isinstance(catch_up, int) or catch_up < 0:
        raise ScheduleError(f"{where}: catch_up={catch_up!r} must be 0 (skip missed ticks), 1 (the latest, "
                            "the default) or N (up to N of them)")
    if overlap not in (OVERLAP_SKIP, OVERLAP_ALLOW):
        raise ScheduleError(f"{where}: overlap={overlap!r} must be \"skip\" (the default) or \"allow\"")
    return Schedule(target, seconds, cron, zone_name, params, catch_up, overlap, zone)


def _zone(where: str, name: Any) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name:
        raise ScheduleError(f"{where}: tz={name!r} must be an IANA zone name, e.g. tz=\"Europe/Berlin\"")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"{where}: unknown time zone {name!r}: give an IANA name such as \"Europe/Berlin\" "
                            "or \"UTC\" (install the tzdata package if the system has none)") from None


def _check_cron(where: str, expression: str, zone: Any) -> None:
    from cronsim import CronSim, CronSimError

    if len(expression.split()) != 5:
        raise ScheduleError(f"{where}: cron={expression!r} must have 5 fields (minute hour day month weekday), "
                            "e.g. \"*/15 * * * *\"")
    try:
        next(CronSim(expression, datetime(2026, 1, 1, tzinfo=zone)))
    except CronSimError as exc:
        raise ScheduleError(f"{where}: cron={expression!r} does not parse ({exc}): write 5 fields, "
                            "e.g. \"*/15 * * * *\"") from None
    except StopIteration:
        raise ScheduleError(f"{where}: cron={expression!r} never fires (no such date): fix the day or month") from None


def tick_key(target: str, tick: float) -> str:
    """The job key of one tick: `<target>@<tick, ISO 8601 UTC>`."""
    return f"{target}@{datetime.fromtimestamp(tick, timezone.utc).strftime(_ISO_TICK)}"


def tick_iso(tick: float) -> str:
    return datetime.fromtimestamp(tick, timezone.utc).strftime(_ISO_TICK)


def next_tick(schedule: Schedule, after: float) -> float:
    """The schedule's first tick strictly after `after` (UTC seconds)."""
    if schedule.every is not None:
        return float((math.floor(after) // schedule.every + 1) * schedule.every)
    from cronsim import CronSim

    start = math.floor(after)
    for local in CronSim(schedule.cron or "", datetime.fromtimestamp(start, schedule.zone)):
        tick = local.timestamp()
        if tick > after and not _repeated(tick, schedule.zone):
            return tick  # (a wall time in a gap maps onto an instant already passed: skipped)
    raise AssertionError("unreachable: make_schedule refuses a cron expression that never fires")


def latest_ticks(schedule: Schedule, after: float | None, now: float, limit: int) -> list[float]:
    """Up to `limit` of the schedule's ticks in (after, now], the latest
    ones, oldest first. Walks back from now, so a long gap costs `limit`
    steps, not one per tick missed."""
    if limit <= 0:
        return []
    floor = -math.inf if after is None else after
    found: list[float] = []
    if schedule.every is not None:
        tick = float(math.floor(now) // schedule.every * schedule.every)
        while tick > floor and len(found) < limit:
            found.append(tick)
            tick -= schedule.every
        return found[::-1]
    from cronsim import CronSim

    last = math.inf
    # From one second after now: cronsim's reverse walk starts strictly before its start.
    for local in CronSim(schedule.cron or "", datetime.fromtimestamp(math.floor(now) + 1, schedule.zone),
                         reverse=True):
        tick = local.timestamp()
        if tick <= floor or len(found) >= limit:
            break
        # A gap's wall time maps onto a later tick's instant; a repeated hour's wall times fired on their first pass.
        if tick < last and tick <= now and not _repeated(tick, schedule.zone):
            found.append(tick)
            last = tick
    return found[::-1]


def _repeated(tick: float, zone: Any) -> bool:
    """The tick's wall time in its zone is the second pass of a repeated hour (DST ends)."""
    local = datetime.fromtimestamp(tick, zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def ticks_to_fire(schedule: Schedule, last_tick: float | None, now: float) -> list[float]:
    """The ticks to insert now, oldest first, given the last tick that has a
    job (`last_tick`, None if none). The latest due tick is on time if it is
    at most ON_TIME (or one period, if shorter) old: it fires. Older due
    ticks are missed: `catch_up` says how many of the latest run (0 none).
    A schedule with no job yet has missed nothing (it did not exist)."""
    due = latest_ticks(schedule, last_tick, now, schedule.catch_up + 1)
    if not due:
        return []
    current = due[-1]
    on_time = now - current <= min(ON_TIME, next_tick(schedule, current) - current)
    if last_tick is None:
        return [current] if on_time else []
    if on_time:
        return due  # the current tick, after at most catch_up missed ones
    return due[-schedule.catch_up:] if schedule.catch_up else []


def may_fire(schedule: Schedule, previous_state: str | None) -> bool:
    """overlap="skip": not while the schedule's previous tick's job has not ended."""
    return schedule.overlap == OVERLAP_ALLOW or previous_state not in ACTIVE_STATES
