"""Children misbehaving, one scenario per way: each is detected within its
limit + 1 s, measured between the master's own log lines (the `spawn` line,
or the moment the test struck, and the `kill` or `job_failed` line), and
classified as what it was. Jobs: tests/apps/faulty.py (heartbeat_timeout 1 s,
interval 0.2 s, no retries)."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apps.faulty import HEARTBEAT_TIMEOUT
from tests.conftest import wait_for
from tests.faults.conftest import log_lines, log_time, report
from tests.faults.helpers import running_job, submit

APP = "tests.apps.faulty:app"


@dataclass(frozen=True)
class Misbehaviour:
    target: str
    outcome: str  # the attempt's recorded outcome
    reason: str  # in the job_failed line's reason=, and in the recorded error
    limit: float  # what it is allowed to take: heartbeat_timeout, its own limit, or 0 (it ends by itself)
    detected_by: str  # the log line that marks detection: kill (Phoenix acted) or job_failed (it ended)


CASES = {
    "sigstop": Misbehaviour("stop_self", "killed", "heartbeat_timeout", HEARTBEAT_TIMEOUT, "kill"),
    "outside_sigkill": Misbehaviour("wait_forever", "signalled", "SIGKILL", 0.0, "job_failed"),
    "segfault": Misbehaviour("segfault", "crashed", "SIGSEGV", 0.0, "job_failed"),
    "os_exit": Misbehaviour("exit3", "exited", "exit code 3", 0.0, "job_failed"),
    "exception": Misbehaviour("raises", "error", "ValueError: boom from the faulty job", 0.0, "job_failed"),
    "cpu_loop_max_runtime": Misbehaviour("cpu_loop", "killed", "max_runtime", 1.0, "kill"),
    "blocked_read_stall_timeout": Misbehaviour("blocked_read", "killed", "stall_timeout", 1.0, "kill"),
    "grandchildren": Misbehaviour("grandchildren", "killed", "heartbeat_timeout", HEARTBEAT_TIMEOUT, "kill"),
    "gil_held_by_c_call": Misbehaviour("gil_c_call", "killed", "heartbeat_timeout", HEARTBEAT_TIMEOUT, "kill"),
    "gil_held_by_regex": Misbehaviour("gil_regex", "killed", "heartbeat_timeout", HEARTBEAT_TIMEOUT, "kill"),
}
# A job that first runs normally for a while before it misbehaves (so its
# beats were flowing): that head start is not detection time.
HEAD_START = {"gil_c_call": 0.3, "gil_regex": 0.3}


def gone(pid: int) -> bool:
    """Exited (reaped, or a zombie waiting for whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("case", list(CASES))
def test_misbehaving_child_is_detected_in_time_and_classified(master_factory, tmp_path, case):
    m = CASES[case]
    master = master_factory(app=APP)
    params = {"pidfile": str(tmp_path / "grandchildren.json")} if case == "grandchildren" else {}
    submit(master, m.target, params, case)
    struck_at = None
    if case == "outside_sigkill":
        pid = running_job(master, case)["pid"]
        master.wait_log(f"spawn pid={pid} ")
        struck_at = time.time()
        os.kill(pid, signal.SIGKILL)  # ours: the child of the master this test started
    jobs = master.wait_jobs_done([case], timeout=20)
    job = jobs[case]

    # Classified as what it was, in the journal and on the log.
    assert (job["state"], job["outcome"], job["attempt"]) == ("failed", m.outcome, 1), job
    assert m.reason in job["error"], job["error"]
    # The journal records the outcome a moment before the master logs it.
    wait_for(lambda: log_lines(master.log(), "job_failed", job=case), timeout=5, what=f"job_failed job={case} logged")
    log = master.log()
    (spawn,) = log_lines(log, "spawn", job=case)
    (failed,) = log_lines(log, "job_failed", job=case)
    assert f"outcome={m.outcome}" in failed.split()
    if m.outcome != "error":
        assert m.reason in failed, failed  # reason=heartbeat_timeout / SIGKILL / "exit code 3" ...
    kills = log_lines(log, "kill", job=case)
    if m.detected_by == "kill":
        (kill,) = kills
        assert f"reason={m.reason}" in kill.split(), kill
        detected = kill
    else:
        assert kills == [], kills  # ended on its own: Phoenix had nothing to kill
        detected = failed
    started = struck_at if struck_at is not None else log_time(spawn) + HEAD_START.get(m.target, 0.0)
    detection = log_time(detected) - started
    assert detection <= m.limit + 1.0, f"{case}: detected after {detection:.3f} s (limit {m.limit} s + 1 s)\n{log}"
    if m.detected_by == "kill":  # and never before its limit: `after=` is the silence (or runtime) it was judged on
        after = float(next(w for w in detected.split() if w.startswith("after=")).removeprefix("after=").rstrip("s"))
        assert m.limit <= after <= m.limit + 1.0, detected
        extra_after = {"judged_after_s": after}
    else:
        extra_after = {}
    ended = log_time(failed) - started

    extra = dict(extra_after)
    if case == "grandchildren":
        grandchildren = json.loads((tmp_path / "grandchildren.json").read_text())
        assert len(grandchildren) == 3
        wait_for(lambda: all(gone(pid) for pid in grandchildren), timeout=5,
                 what="the grandchildren (one ignores SIGTERM) to die with the job's process group")
        extra["grandchildren_dead"] = len(grandchildren)
    report("child", case=case, outcome=m.outcome, reason=json.dumps(m.reason), limit_s=m.limit,
           detected_s=f"{detection:.3f}", recorded_s=f"{ended:.3f}", **extra)
