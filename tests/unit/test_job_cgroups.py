"""The per-job cgroups part (master/cgroups.py) in process, on phoenix.testing's
FakeClock, against the host's real memory controller and real processes:
placing a process, naming (or not) its end, removing its cgroup, leaving a
cgroup another user made alone. Skipped where no memory cgroup is writable
(tests/test_cgroups.py says why)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from phoenix.linux import cgroups, procfs
from phoenix.master.attempts import Attempt
from phoenix.master.cgroups import JobCgroups
from phoenix.master.metrics import Counters
from phoenix.rules.memory import attempt_cgroup_name
from phoenix.testing import FakeClock
from tests.conftest import wait_for
from tests.test_cgroups import OWN_CGROUP, WHY_NOT

pytestmark = pytest.mark.skipif(OWN_CGROUP is None, reason=f"no writable memory cgroup here: {WHY_NOT}")
M = 1024**2


@pytest.fixture
def part(tmp_path: Path) -> Iterator[JobCgroups]:
    part = JobCgroups(str(tmp_path / "state"), Counters(), FakeClock().monotonic)
    part.open(enabled=True)
    yield part
    part.clean_leftovers(running=set())  # what a failed test left
    part.close()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def attempt_of(process: subprocess.Popen[bytes], attempt_id: int) -> Attempt:
    return Attempt(attempt_id, 1, "k", "m:f", 1, process.pid, None, 0.0, 0.0, 0.0)


def test_a_placed_process_runs_under_its_limit_and_its_cgroup_goes_with_its_end(part, sleeper):
    assert part.describe() == f"cgroup v1 {part.group}"
    path = part.place(7, sleeper.pid, procfs.start_time(sleeper.pid), 64 * M)
    assert path == os.path.join(str(part.group), attempt_cgroup_name(7))
    assert cgroups.processes(path) == [sleeper.pid]
    assert cgroups.read(os.path.join(path, "memory.limit_in_bytes")).strip() == str(64 * M)
    attempt = attempt_of(sleeper, 7)
    attempt.cgroup = path
    sleeper.send_signal(signal.SIGKILL)
    assert sleeper.wait() == -signal.SIGKILL
    part.ended(attempt, signal.SIGKILL)  # a wait status: killed by SIGKILL, which its cgroup did not count
    assert attempt.kill_reason is None  # an outside SIGKILL stays `signalled`
    assert not os.path.exists(path)


def test_a_cgroup_the_job_made_inside_its_own_goes_with_it(tmp_path, sleeper):
    """An outside check: rmdir refuses a cgroup with children, and each such attempt's cgroup was left for good."""
    clock = FakeClock()
    part = JobCgroups(str(tmp_path / "state"), Counters(), clock.monotonic)
    part.open(enabled=True)
    try:
        path = part.place(8, sleeper.pid, procfs.start_time(sleeper.pid), 64 * M)
        inner = os.path.join(path, "the-jobs-own")
        os.mkdir(inner)
        cgroups.write(os.path.join(inner, "cgroup.procs"), str(sleeper.pid))
        attempt = attempt_of(sleeper, 8)
        attempt.cgroup = path
        part.ended(attempt, None)  # its process still in there: killed, then both removed
        assert sleeper.wait(10) == -signal.SIGKILL

        def removed() -> bool:
            clock.advance(0.2)
            part.tick()
            return not os.path.exists(path)

        wait_for(removed, 10, "the attempt's cgroup and the one inside it removed")
    finally:
        part.clean_leftovers(running=set())
        part.close()


def test_a_cgroup_another_user_made_with_an_attempts_name_is_neither_used_nor_removed(part, sleeper):
    assert part.group is not None
    planted = os.path.join(part.group, attempt_cgroup_name(8))
    os.mkdir(planted)
    try:
        os.chown(planted, 65534, 65534)
        # its memory is the watchdog's then
        assert part.place(8, sleeper.pid, procfs.start_time(sleeper.pid), 64 * M) is None
        assert cgroups.processes(planted) == []
        part.clean_leftovers(running=set())
        assert os.path.exists(planted)
    finally:
        os.rmdir(planted)


def test_a_master_with_no_limit_leaves_no_group_and_makes_it_for_the_first_limit(tmp_path, sleeper):
    part = JobCgroups(str(tmp_path / "state"), Counters(), FakeClock().monotonic)
    part.open(enabled=True, any_limit=False)
    assert part.group is not None and not os.path.exists(part.group)  # proven writable, then removed
    try:
        path = part.place(9, sleeper.pid, procfs.start_time(sleeper.pid), 64 * M)  # a reload brought a limit
        assert path is not None and cgroups.processes(path) == [sleeper.pid]
    finally:
        part.clean_leftovers(running=set())  # the process in it killed
        sleeper.wait(timeout=10)
        part.close()
    assert not os.path.exists(part.group)


def test_memory_cgroups_off_means_the_watchdog(tmp_path):
    off = JobCgroups(str(tmp_path / "other"), Counters(), FakeClock().monotonic)
    off.open(enabled=False)
    assert (off.describe(), off.group) == ("watchdog", None)


def test_a_pid_that_no_longer_names_the_waiting_child_is_not_moved(part, sleeper):
    """The fork server's child died waiting and its pid went to another process (here: another start time)."""
    before = cgroups.read(f"/proc/{sleeper.pid}/cgroup")
    assert part.place(10, sleeper.pid, (procfs.start_time(sleeper.pid) or 0) + 1, 64 * M) is None
    assert cgroups.read(f"/proc/{sleeper.pid}/cgroup") == before


def test_a_group_others_may_write_in_is_not_trusted(part, tmp_path):
    assert part.group is not None
    os.chmod(part.group, 0o777)  # someone loosened it: another user could plant cgroups (or processes) there
    again = JobCgroups(str(tmp_path / "state"), Counters(), FakeClock().monotonic)
    again.open(enabled=True)
    assert again.describe() == "watchdog"
    os.chmod(part.group, 0o755)
