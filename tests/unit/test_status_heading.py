"""The heading `phoenix status` prints for a master that is alive but does not answer, in-process."""

from __future__ import annotations

from phoenix.cli.status import NOT_RESPONDING, summary


def test_a_master_that_does_not_answer_is_shown_with_its_pid_state_and_the_way_to_resume_it() -> None:
    report = {"master": {"pid": 42, "state": NOT_RESPONDING, "process_state": "T", "process_state_name": "stopped",
                         "error": "it is stopped\x1b[2J", "generation": 3}, "counts": {"pending": 1}, "jobs": []}
    head, _columns, _rows = summary(report)
    assert head.startswith("master: not responding  pid 42  process state T (stopped)  generation 3")
    assert "holds the lock" in head and "kill -CONT 42" in head
    assert "\x1b" not in head  # what it says is escaped
