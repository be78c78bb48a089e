"""The master's shortage rules (phoenix/rules/shortage.py), in-process: the slots an
open-file limit and the limits on tasks carry, and the back-off of a master that cannot fork."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from phoenix.master.slots import cgroup_pids_max
from phoenix.rules.shortage import (
    BASE_FDS,
    BASE_TASKS,
    FIRST_RETRY,
    MAX_RETRY,
    TASKS_PER_SLOT,
    ForkBackoff,
    TaskLimit,
    fds_needed,
    slots_for_tasks,
    slots_that_fit,
    task_refusal,
    tasks_needed,
    tightest,
)


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


# -- the limits on tasks: pid_max, threads-max, RLIMIT_NPROC, a cgroup's pids.max --------


@given(st.integers(min_value=0, max_value=4_000_000))
def test_the_slots_a_task_limit_carries_need_no_more_than_it_and_one_more_would(limit: int) -> None:
    slots = slots_for_tasks(limit)
    if slots:
        assert tasks_needed(slots) <= limit
    assert tasks_needed(slots + 1) > limit


def test_each_child_counts_two_tasks_the_job_and_its_heartbeat_thread() -> None:
    assert TASKS_PER_SLOT == 2
    assert tasks_needed(10_000) == BASE_TASKS + 20_000


def test_ten_thousand_slots_fit_the_default_pid_max_and_twenty_thousand_are_refused_naming_it() -> None:
    limits = [TaskLimit("kernel.pid_max", 32_768, "raise it (sysctl -w kernel.pid_max=N)"),
              TaskLimit("kernel.threads-max", 192_735, "raise it")]
    assert task_refusal(10_000, limits) is None
    refusal = task_refusal(20_000, limits)
    assert refusal is not None and "\n" not in refusal
    assert refusal.startswith("workers = 20000 need 40032 tasks")
    assert "kernel.pid_max (32768)" in refusal and "sysctl -w kernel.pid_max=" in refusal
    assert f"at most {slots_for_tasks(32_768)}" in refusal


def test_the_refusal_names_the_tightest_limit() -> None:
    limits = [TaskLimit("kernel.pid_max", 32_768, "a"), TaskLimit("RLIMIT_NPROC", 4_096, "ulimit -Hu"),
              TaskLimit("the cgroup's pids.max", 9_000, "TasksMax=")]
    assert tightest(limits) == limits[1]
    refusal = task_refusal(3_000, limits)
    assert refusal is not None and "RLIMIT_NPROC (4096)" in refusal and "ulimit -Hu" in refusal
    assert task_refusal(2_000, limits) is None
    assert task_refusal(1_000_000, []) is None  # no limit known: the fork that meets one is backed off


def _cgroup(root: Path, path: str, pids_max: str) -> None:
    directory = root / path.strip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pids.max").write_text(pids_max + "\n")


def test_a_cgroup_v2_pids_max_is_the_lowest_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    _cgroup(tmp_path, "system.slice", "5000")
    _cgroup(tmp_path, "system.slice/phoenix.service", "max")
    assert cgroup_pids_max("0::/system.slice/phoenix.service\n", tmp_path) == 5000
    _cgroup(tmp_path, "system.slice/phoenix.service", "700")
    assert cgroup_pids_max("0::/system.slice/phoenix.service\n", tmp_path) == 700


def test_a_cgroup_v1_pids_controller_is_read_and_no_limit_is_none(tmp_path: Path) -> None:
    _cgroup(tmp_path / "pids", "docker/abc", "100")
    proc = "12:memory:/docker/abc\n8:pids:/docker/abc\n1:name=systemd:/docker/abc\n"
    assert cgroup_pids_max(proc, tmp_path) == 100
    _cgroup(tmp_path / "pids", "docker/abc", "max")
    assert cgroup_pids_max(proc, tmp_path) is None
    assert cgroup_pids_max("0::/\n", tmp_path) is None  # the root cgroup has no pids.max
    assert cgroup_pids_max("", tmp_path) is None
