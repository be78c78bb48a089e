"""Schedule arithmetic (rules/schedule.py): ticks, DST, catch-up, overlap, and
the refusals of bad input. Pure: "now" is passed in, no clock is read."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from phoenix.rules.schedule import (
    ScheduleError,
    due_time,
    latest_ticks,
    make_schedule,
    may_fire,
    next_tick,
    parse_at,
    parse_priority,
    tick_iso,
    tick_key,
    ticks_to_fire,
)

UTC = timezone.utc


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def walk(schedule, start: str, count: int) -> list[str]:
    ticks, t = [], at(start)
    for _ in range(count):
        t = next_tick(schedule, t)
        ticks.append(tick_iso(t))
    return ticks


def test_every_ticks_on_the_epoch_not_on_a_start_time():
    every = make_schedule("m:f", every=900)
    # Two masters that started at different moments compute the same ticks.
    assert walk(every, "2026-12-07T10:03:17+00:00", 2) == walk(every, "2026-12-07T10:11:59+00:00", 2) == [
        "2026-12-07T10:15:00Z", "2026-12-07T10:30:00Z"]
    assert next_tick(every, at("2026-12-07T10:15:00+00:00")) == at("2026-12-07T10:30:00+00:00")  # strictly after
    assert tick_key("feeds:fetch", at("2026-12-07T10:15:00+00:00")) == "feeds:fetch@2026-12-07T10:15:00Z"


def test_cron_in_a_zone_keeps_its_wall_time_across_dst():
    daily = make_schedule("m:f", cron="0 9 * * *", tz="Europe/Berlin")
    # 09:00 in Berlin is 08:00Z in winter and 07:00Z in summer (DST began on 2026-03-29).
    assert walk(daily, "2026-03-27T12:00:00+00:00", 3) == [
        "2026-03-28T08:00:00Z", "2026-03-29T07:00:00Z", "2026-03-30T07:00:00Z"]


def test_a_wall_time_in_the_dst_gap_fires_once_right_after_it():
    at_0230 = make_schedule("m:f", cron="30 2 * * *", tz="Europe/Berlin")
    # 2026-03-29 02:30 does not exist in Berlin: fired once at 03:00 CEST (01:00Z), as Debian cron does.
    assert walk(at_0230, "2026-03-28T12:00:00+00:00", 2) == ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
    quarter = make_schedule("m:f", cron="*/15 * * * *", tz="Europe/Berlin")
    ticks = walk(quarter, "2026-03-29T00:40:00+00:00", 4)
    assert ticks == ["2026-03-29T00:45:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:15:00Z", "2026-03-29T01:30:00Z"]
    assert len(set(ticks)) == len(ticks)


def test_a_repeated_wall_time_fires_once():
    at_0230 = make_schedule("m:f", cron="30 2 * * *", tz="Europe/Berlin")
    # 2026-10-25 02:30 happens twice in Berlin (00:30Z and 01:30Z): only the first fires.
    assert walk(at_0230, "2026-10-24T12:00:00+00:00", 2) == ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    half = make_schedule("m:f", cron="*/30 * * * *", tz="Europe/Berlin")
    assert walk(half, "2026-10-24T23:50:00+00:00", 4) == [
        "2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z",  # 02:00, 02:30 CEST
        "2026-10-25T02:00:00Z", "2026-10-25T02:30:00Z"]  # 03:00, 03:30 CET: the second 02:xx is not fired
    # The backward walk (catch-up) agrees with the forward one.
    assert [tick_iso(t) for t in latest_ticks(half, at("2026-10-24T23:50:00+00:00"),
                                              at("2026-10-25T02:30:00+00:00"), 10)] == walk(
        half, "2026-10-24T23:50:00+00:00", 4)


def test_on_time_ticks_fire_and_a_late_loop_turn_still_counts_as_on_time():
    quarter = make_schedule("m:f", every=900)
    last = at("2026-12-07T10:00:00+00:00")
    assert ticks_to_fire(quarter, last, at("2026-12-07T10:14:59+00:00")) == []
    assert [tick_iso(t) for t in ticks_to_fire(quarter, last, at("2026-12-07T10:15:00.4+00:00"))] == [
        "2026-12-07T10:15:00Z"]
    assert [tick_iso(t) for t in ticks_to_fire(quarter, last, at("2026-12-07T10:15:20+00:00"))] == [
        "2026-12-07T10:15:00Z"]  # 20 s late (a frozen master): still on time


@pytest.mark.parametrize(("catch_up", "fired"), [
    (1, ["2026-12-07T12:00:00Z"]),  # the latest missed tick, once
    (0, []),  # missed ticks skipped; the next one fires at 12:15
    (3, ["2026-12-07T11:30:00Z", "2026-12-07T11:45:00Z", "2026-12-07T12:00:00Z"]),
])
def test_catch_up_after_a_time_with_no_master(catch_up, fired):
    quarter = make_schedule("m:f", every=900, catch_up=catch_up)
    last = at("2026-12-07T10:00:00+00:00")  # the last tick with a job; no master from then until 12:07
    now = at("2026-12-07T12:07:00+00:00")
    assert [tick_iso(t) for t in ticks_to_fire(quarter, last, now)] == fired


def test_catch_up_counts_missed_ticks_beside_the_one_on_time():
    quarter = make_schedule("m:f", every=900, catch_up=1)
    assert [tick_iso(t) for t in ticks_to_fire(quarter, at("2026-12-07T09:30:00+00:00"),
                                               at("2026-12-07T10:00:05+00:00"))] == [
        "2026-12-07T09:45:00Z", "2026-12-07T10:00:00Z"]


def test_a_new_schedule_missed_nothing():
    quarter = make_schedule("m:f", every=900)
    assert ticks_to_fire(quarter, None, at("2026-12-07T10:07:00+00:00")) == []
    assert [tick_iso(t) for t in ticks_to_fire(quarter, None, at("2026-12-07T10:15:01+00:00"))] == [
        "2026-12-07T10:15:00Z"]


def test_a_long_gap_costs_catch_up_steps_not_one_per_tick():
    every_second = make_schedule("m:f", every=1, catch_up=2)
    now = at("2026-12-07T10:00:00+00:00")
    fired = ticks_to_fire(every_second, now - 86400 * 365 * 5, now)  # five years without a master
    assert fired == [now - 2, now - 1, now]  # two missed, and the one on time


def test_overlap_skip_waits_for_the_previous_tick_job_to_end():
    skip = make_schedule("m:f", every=60)
    allow = make_schedule("m:f", every=60, overlap="allow")
    for state in ("scheduled", "pending", "running"):
        assert not may_fire(skip, state)
        assert may_fire(allow, state)
    for state in (None, "finished", "failed", "cancelled"):
        assert may_fire(skip, state)


def test_due_time_from_in_or_at():
    now = at("2026-12-07T10:00:00+00:00")
    assert due_time(now) is None
    assert due_time(now, run_in="90") == now + 90
    assert due_time(now, run_at="2026-12-07T10:00:00+01:00") == at("2026-12-07T09:00:00+00:00")
    assert due_time(now, run_at="2026-12-07T09:00:00Z") == at("2026-12-07T09:00:00+00:00")
    assert due_time(now, run_at=datetime(2026, 12, 7, 9, tzinfo=UTC) + timedelta(hours=1)) == now
    assert due_time(now, run_at="2020-01-01T00:00:00Z") < now  # the past: due at once, kept for its order
    assert due_time(now, run_at="1970-01-01T00:00:00Z") == 0  # the earliest
    assert due_time(now, run_in=100 * 366 * 86400) == now + 100 * 366 * 86400  # the farthest


@pytest.mark.parametrize(("call", "words"), [
    (lambda: parse_at("2026-12-07T10:00:00"), "has no offset"),
    (lambda: parse_at("tomorrow"), "not an ISO 8601 time"),
    (lambda: parse_at(datetime(2026, 12, 7)), "no time zone"),
    (lambda: due_time(0, run_in="-1"), "0 or more"),
    (lambda: due_time(0, run_in="soon"), "number of seconds"),
    (lambda: due_time(0, run_in="nan"), "number of seconds"),
    (lambda: due_time(0, run_in="1e300"), "at most"),  # past any date: `phoenix show` crashed on it
    (lambda: due_time(0, run_in=1e15), "at most"),  # 31 million years
    (lambda: parse_at("0001-01-01T00:00:00+14:00"), "out of range"),  # before year 1 in UTC
    (lambda: parse_at("1969-12-31T23:59:59Z"), "out of range"),
    (lambda: parse_at("9999-12-31T23:59:59-14:00"), "out of range"),  # after year 9999 in UTC
    (lambda: parse_at(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))), "out of range"),
    (lambda: due_time(0, run_in=1, run_at="2026-12-07T10:00:00Z"), "not both"),
    (lambda: parse_priority("-1"), "whole number"),
    (lambda: parse_priority("high"), "whole number"),
    (lambda: parse_priority(1.5), "whole number"),
    (lambda: make_schedule("m:f", every=0), "above 0"),
    (lambda: make_schedule("m:f", every=-5), "above 0"),
    (lambda: make_schedule("m:f", every=1.5), "whole number"),
    (lambda: make_schedule("m:f"), "every=SECONDS or cron="),
    (lambda: make_schedule("m:f", every=60, cron="* * * * *"), "one of them"),
    (lambda: make_schedule("m:f", cron="*/15 * * *"), "5 fields"),
    (lambda: make_schedule("m:f", cron="61 * * * *"), "does not parse"),
    (lambda: make_schedule("m:f", cron="0 0 30 2 *"), "does not parse"),
    (lambda: make_schedule("m:f", cron="* * * * *", tz="Mars/Olympus"), "unknown time zone"),
    (lambda: make_schedule("m:f", every=60, catch_up=-1), "catch_up"),
    (lambda: make_schedule("m:f", every=60, overlap="queue"), "overlap"),
])
def test_bad_input_is_one_line_naming_the_fix(call, words):
    with pytest.raises(ScheduleError) as refusal:
        call()
    message = str(refusal.value)
    assert words in message and "\n" not in message, message


def test_priorities():
    assert parse_priority("7") == parse_priority(7) == 7
    assert parse_priority(0) == 0
