"""The job-speed bench (bench/jobspeed.py, bench/speed_jobs.py): the job
reports what it did, and the verdict is taken on the time less the job
thread's wait for a CPU, not on a wall time that other work stretched."""

from __future__ import annotations

from typing import Any

from bench.jobspeed import TARGET, rows
from bench.report import Row
from bench.speed_jobs import work


def test_outside_phoenix_the_job_runs_bare_and_reports_its_progress_calls() -> None:
    result = work({"kind": "churn", "units": 50, "beat_hz": 1000})
    assert result["under_phoenix"] is False
    assert result["beats"] >= 1  # the first call is due a millisecond in
    assert 0 <= result["unqueued_seconds"] <= result["seconds"]


def spread(median: float) -> dict[str, float]:
    return {"min": median, "median": median, "max": median}


def ok(value: float, limit: float, below: bool = True) -> bool:
    return value <= limit if below else value >= limit


def test_the_verdict_is_on_the_time_less_the_wait_for_a_cpu() -> None:
    # Other work stretched the bare runs' wall time (Phoenix 1.5x "faster"), but the job itself was 10 % slower.
    figure = {"phoenix_s": spread(2.0), "bare_s": spread(3.0), "ratio": 1.5, "ratio_per_round": spread(1.5),
              "unqueued_phoenix_s": spread(2.2), "unqueued_bare_s": spread(2.0), "unqueued_ratio": 2.0 / 2.2,
              "unqueued_ratio_per_round": spread(2.0 / 2.2), "cpu_ratio": 0.91, "progress_per_s": 1000.0}
    result: dict[str, Any] = {"seconds": 2.0, "beat_hz": 1000, "rounds": 1, "figures": {"spin": figure},
                              "loads": ["7.0 6.0 5.0"], "load_end": "7.0 6.0 5.0"}
    (row,) = rows(result, Row, ok)
    assert row.met is False
    assert row.ratio.startswith("0.909x") and str(TARGET) in row.target
    assert "wall time 1.500x" in row.note
