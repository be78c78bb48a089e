"""phoenix.testing.FakeClock: time that moves only when a test moves it."""

from __future__ import annotations

import selectors
import socket

import pytest

from phoenix.testing import FakeClock


def test_both_clocks_move_together_and_only_when_told() -> None:
    clock = FakeClock(start=10.0, boot_offset=100.0)
    assert (clock.monotonic(), clock.since_boot()) == (10.0, 110.0)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.since_boot()) == (12.5, 112.5)


@pytest.mark.parametrize("seconds", [-0.1, float("nan"), float("inf")])
def test_a_clock_moves_only_forward_by_a_finite_amount(seconds: float) -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="finite number of seconds, 0 or more"):
        clock.advance(seconds)
    assert clock.monotonic() == FakeClock().monotonic()  # unmoved: a NaN would make every deadline never due


def test_wait_returns_what_is_ready_without_moving_the_clock() -> None:
    clock = FakeClock(start=0.0)
    left, right = socket.socketpair()
    with selectors.DefaultSelector() as selector, left, right:
        selector.register(left, selectors.EVENT_READ)
        right.send(b"x")
        assert [key.fileobj for key, _ in clock.wait(selector, 30.0)] == [left]
        assert clock.monotonic() == 0.0


def test_wait_with_nothing_ready_jumps_to_the_deadline() -> None:
    clock = FakeClock(start=0.0)
    left, right = socket.socketpair()
    with selectors.DefaultSelector() as selector, left, right:
        selector.register(left, selectors.EVENT_READ)
        assert clock.wait(selector, 30.0) == []
        assert clock.monotonic() == 30.0
        clock.autojump = False
        clock.wait(selector, 30.0)
        assert clock.monotonic() == 30.0
