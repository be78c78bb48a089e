"""Ages on the command line: `45s`, `30m`, `1h`, `7d` (`phoenix jobs --since`,
`phoenix prune --finished-before`)."""

from __future__ import annotations

import re

from phoenix.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


class BadDuration(UsageError, ValueError):
    """A duration that is not a number and one unit."""


def parse_duration(text: str) -> float:
    """Seconds in `text`: a non-negative number and one unit of s, m, h, d, w."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise BadDuration(f"{text!r} is not a duration: write a number and a unit, "
                          f"one of s (seconds), m (minutes), h (hours), d (days), w (weeks): 45s, 30m, 1h, 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]
