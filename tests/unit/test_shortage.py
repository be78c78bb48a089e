"""The master's shortage rules (phoenix/shortage.py), in-process: the slots an
open-file limit carries, and the back-off of a master that cannot fork."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from phoenix.rules.shortage import BASE_FDS, FIRST_RETRY, MAX_RETRY, ForkBackoff, fds_needed, slots_that_fit


@given(st.integers(min_value=0, max_value=2_000_000))
def test_the_slots_that_fit_a_limit_need_no_more_than_it_and_one_more_would(limit: int) -> None:
    slots = slots_that_fit(limit)
    assert slots >= 0
    if slots:
        assert fds_needed(slots) <= limit
    assert fds_needed(slots + 1) > limit


def test_a_limit_of_64_carries_a_few_slots_and_the_base_none() -> None:
    assert slots_that_fit(64) == 10
    assert slots_that_fit(BASE_FDS) == 0
    assert slots_that_fit(1_048_576) > 100_000


def test_the_back_off_doubles_to_its_cap_and_is_said_once() -> None:
    backoff = ForkBackoff()
    assert not backoff.blocked(0.0)
    firsts = [backoff.failed(float(n)) for n in range(12)]
    assert firsts == [True] + [False] * 11  # one log line per shortage
    assert backoff.retry_at == 11.0 + MAX_RETRY  # capped
    assert backoff.blocked(11.0 + MAX_RETRY - 0.01) and not backoff.blocked(11.0 + MAX_RETRY)
    assert backoff.succeeded(20.0) == (20.0, 12)
    assert backoff.succeeded(21.0) is None  # no shortage, nothing to say
    assert backoff.failed(30.0)  # a new shortage is said again
    assert backoff.retry_at == 30.0 + FIRST_RETRY
