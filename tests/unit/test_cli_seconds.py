"""The command line's waits (cli/main.Seconds) and how it says a duration."""

from __future__ import annotations

import click
import pytest

from phoenix.cli.main import Seconds, _duration


@pytest.mark.parametrize("text", ["\u0665", "\uff11", "\u0661.5", "\u00a05", "1\u200b"])
def test_a_wait_in_digits_other_than_ascii_is_refused(text: str) -> None:
    """float() takes any script's digits ("٥" is 5, "１" is 1): a wait is ASCII, as max_memory is."""
    with pytest.raises(click.BadParameter, match="is not a number of seconds from"):
        Seconds(zero_ok=True).convert(text, None, None)


@pytest.mark.parametrize(("text", "seconds"), [("5", 5.0), (" 0.5 ", 0.5), ("1e-3", 0.001), ("0", 0.0)])
def test_an_ascii_wait_is_taken(text: str, seconds: float) -> None:
    assert Seconds(zero_ok=True).convert(text, None, None) == seconds
    assert Seconds().convert(120.0, None, None) == 120.0  # a default, already a number


@pytest.mark.parametrize(("seconds", "said"), [(3.81316, "3.81 s"), (100.0, "100 s"), (0.5, "0.5 s"),
                                               (9.96806e-10, "less than 0.01 s"), (60.0, "60 s")])
def test_a_duration_is_said_to_a_hundredth(seconds: float, said: str) -> None:
    assert _duration(seconds) == said
