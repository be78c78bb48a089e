"""The throughput bench's peer check (bench/throughput.py): a peer's figure
in the run is compared with what the peer, calibrated alone, predicts, and
a figure far off it backs no ratio ("peer run suspect", never "met")."""

from __future__ import annotations

from typing import Any

from bench.__main__ import throughput_rows
from bench.report import Report, _mark
from bench.throughput import SUSPECT_FACTOR, peer_checks

# RQ alone here: 0.9 s from launching the workers to the first job, then 45 jobs/s.
RQ_ALONE = {"rq": {"n": 100, "startup_seconds": 0.9, "work_seconds": 100 / 45, "jobs_per_s": 45.0}}


def test_a_peer_timed_through_a_stall_that_is_not_its_work_is_suspect() -> None:
    # The run that printed RQ at 3 jobs/s: 200 jobs in 63.7 s, timed to workers that lingered 60 s.
    check = peer_checks(RQ_ALONE, 200, {"rq": 63.7})["rq"]
    assert check["predicted_seconds"] == 0.9 + 200 / 45
    assert check["agreement"] < 1 / SUSPECT_FACTOR
    assert "63.70 s in the run" in check["suspect"]


def test_a_peer_much_faster_in_the_run_than_alone_is_suspect_too() -> None:
    assert peer_checks(RQ_ALONE, 200, {"rq": 1.0})["rq"]["suspect"]


def test_a_figure_near_the_prediction_backs_its_ratio() -> None:
    assert peer_checks(RQ_ALONE, 200, {"rq": 4.7})["rq"]["suspect"] == ""
    assert peer_checks(RQ_ALONE, 200, {"pool": 1.0}) == {}  # only calibrated peers are judged


def throughput_result(rq_seconds: float) -> dict[str, Any]:
    n = 200
    median = {"phoenix": 2.0, "pool": 2.0, "bare": 0.2, "rq": rq_seconds}
    calibration = {**RQ_ALONE,
                   "pool": {"n": 100, "startup_seconds": 0.05, "work_seconds": 1.0, "jobs_per_s": 100.0},
                   "bare": {"n": 100, "startup_seconds": 0.05, "work_seconds": 0.1, "jobs_per_s": 1000.0}}
    return {"n": n, "reps": 1, "slots": 2, "all": {k: [v] for k, v in median.items()}, "best": median,
            "median": median, "jobs_per_s": {k: n / v for k, v in median.items()},
            "ratio_per_rep": {k: [v / 2.0] for k, v in median.items() if k != "phoenix"}, "rq_note": None,
            "calibration": calibration, "peer_checks": peer_checks(calibration, n, median)}


def test_a_suspect_peer_run_is_never_reported_as_a_met_target() -> None:
    report = Report("quick", "python -m bench")
    throughput_rows(throughput_result(63.7), report)  # 31.9x RQ: the 5x target would read "met"
    (rq_row,) = [row for row in report.rows if row.peer.startswith("RQ")]
    assert rq_row.met is True
    assert _mark(rq_row) == "peer run suspect"
    assert "peer run suspect" in rq_row.suspect


def test_a_consistent_peer_run_reports_its_target() -> None:
    report = Report("quick", "python -m bench")
    throughput_rows(throughput_result(4.7), report)
    (rq_row,) = [row for row in report.rows if row.peer.startswith("RQ")]
    assert _mark(rq_row) == "MISSED"  # 2.35x RQ, honestly below the 5x target


def test_a_suspect_pool_run_marks_the_cpu_per_job_rows_suspect_too() -> None:
    result = throughput_result(4.7)
    result["median"]["pool"] = 20.0  # ten times its calibrated run: timed through something not its work
    result["jobs_per_s"]["pool"] = result["n"] / 20.0
    result["peer_checks"] = peer_checks(result["calibration"], result["n"], result["median"])
    assert result["peer_checks"]["pool"]["suspect"]
    result["jobs_per_s"]["batch"] = 90.0
    result["median"]["batch"] = result["n"] / 90.0
    result["batch_per_rep"] = {"batch": {"speed": [0.9], "cpu": [0.5]}}
    result["cpu_ms_per_job"] = {"batch": 1.0, "pool": 2.0}  # 0.5x the Pool's CPU: "met" if the Pool's run held
    report = Report("quick", "python -m bench")
    throughput_rows(result, report)
    (cpu_row,) = [row for row in report.rows if row.figure.endswith(": CPU per job")]
    assert cpu_row.met is True
    assert _mark(cpu_row) == "peer run suspect" and "peer run suspect" in cpu_row.suspect
