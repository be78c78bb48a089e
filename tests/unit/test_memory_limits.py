"""How a memory limit is written and refused (config.parse_max_memory),
when the watchdog looks at a job again (rules/memory.py), and how long an
OOM kill in the master's own cgroup may name a job's end (master/cgroups.py)."""

from __future__ import annotations

import signal

import pytest

from phoenix.config import MIN_MAX_MEMORY, parse_max_memory
from phoenix.master.attempts import Attempt
from phoenix.master.cgroups import OOM_CLAIM_WINDOW, JobCgroups
from phoenix.master.metrics import Counters
from phoenix.rules.memory import FIRST_LOOK, LONGEST_GAP, PLANNED_GROWTH, next_look
from phoenix.rules.states import KillReason
from phoenix.testing import FakeClock

M = 1024**2


@pytest.mark.parametrize(("text", "size"), [
    ("512M", 512 * M), ("512m", 512 * M), ("1.5G", 1536 * M), ("200MB", 200 * M), ("1GiB", 1024 * M),
    (" 64 M ", 64 * M), (str(100 * M), 100 * M), (100 * M, 100 * M), (None, None),
])
def test_a_limit_is_a_size(text, size):
    assert parse_max_memory(text, "max_memory") == size


@pytest.mark.parametrize(("value", "fix"), [
    ("lots", 'wants a size such as "512M"'), ("-5M", "wants a size"), ("5 MBs", "wants a size"),
    (True, "wants a size"), (1.5e9, "wants a size"), ("16M", "below the 32M a Python child needs to start"),
    (0, "below the 32M"), ("9" * 400 + "G", "more memory than any machine has"),
    (2**63, "more memory than any machine has"), ("5000000T", "more memory than any machine has"),
    ("\uff11\uff15\uff10M", "wants a size"), ("\u0663\u0663M", "wants a size"),  # fullwidth, Arabic-Indic digits
])
def test_anything_else_is_refused_in_one_line_naming_the_fix(value, fix):
    with pytest.raises(ValueError) as raised:
        parse_max_memory(value, "max_memory")
    assert fix in str(raised.value) and "\n" not in str(raised.value)


def test_the_watchdog_looks_again_before_a_job_growing_twice_the_planned_rate_reaches_twice_its_limit():
    limit = 150 * M
    for rss in (MIN_MAX_MEMORY, 60 * M, 140 * M, limit):
        gap = next_look(rss, limit)
        assert FIRST_LOOK <= gap <= LONGEST_GAP
        assert rss + 2 * PLANNED_GROWTH * gap <= 2 * limit or gap == FIRST_LOOK
    assert next_look(0, 100 * 1024**3) == LONGEST_GAP  # far below a large limit: a look a second


def test_an_oom_kill_no_job_claims_is_forgotten_after_the_window(tmp_path):
    """The master's own cgroup counts an OOM kill (here: its memory.events, a
    file the test writes). A job that dies of SIGKILL within OOM_CLAIM_WINDOW
    is named `oom`; once two looks have passed unclaimed, an operator's later
    `kill -9` of a job is not (an outside check saw one named oom 30 s later).
    On the fake clock: tests/test_cgroups.py has the real OOM killer."""
    events = tmp_path / "memory.events"
    events.write_text("oom 0\noom_kill 0\n")
    clock = FakeClock()
    part = JobCgroups(str(tmp_path / "state"), Counters(), clock.monotonic)
    assert part._count_oom_kills_in(str(events))
    sigkill = signal.SIGKILL  # a wait status: killed by SIGKILL

    def ended_by_sigkill(attempt_id: int) -> Attempt:
        attempt = Attempt(attempt_id, attempt_id, f"k{attempt_id}", "m:f", 1, 4_000_000 + attempt_id, None,
                          0.0, 0.0, 0.0)
        part.ended(attempt, sigkill)
        return attempt

    events.write_text("oom 1\noom_kill 1\n")  # the kernel kills a job: it dies within the window
    clock.advance(OOM_CLAIM_WINDOW / 2)
    part.tick()
    assert ended_by_sigkill(1).kill_reason == KillReason.OOM
    events.write_text("oom 2\noom_kill 2\n")  # the kernel kills a process that is no job
    for _look in range(2):
        clock.advance(OOM_CLAIM_WINDOW)
        part.tick()
    assert ended_by_sigkill(2).kill_reason is None  # an operator's kill -9, later: not the OOM killer's
