"""Memory limits (`@app.job(max_memory="512M")`, the `max_memory` setting):
when the watchdog looks at a job again. (How a limit is written, and the
least one a job can have: config.parse_max_memory.) Pure: tests/unit/test_memory_limits.py."""

from __future__ import annotations

# The fastest growth the watchdog plans for, in bytes per second: it looks
# again when a job growing at this rate would reach its limit, so a job
# growing up to twice as fast is still killed before twice its limit.
PLANNED_GROWTH = 1024**3
FIRST_LOOK = 0.02  # seconds after the start, and the shortest gap between two looks
LONGEST_GAP = 1.0  # the longest, however far below its limit a job is


def next_look(rss: int, limit: int) -> float:
    """Seconds until the watchdog looks at a job of `rss` bytes again."""
    return min(LONGEST_GAP, max(FIRST_LOOK, (limit - rss) / PLANNED_GROWTH))


def size_text(size: int) -> str:
    return f"{size / 1024**2:.0f}M"
