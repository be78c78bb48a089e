"""Memory limits the kernel enforces (master/cgroups.py), with real masters,
children and the host's memory cgroup controller: a job past its limit is
killed by its cgroup while its neighbour finishes, what the job forks is
limited with it, the cgroup goes when the attempt ends, an adopted child
keeps its cgroup across a USR2, a crashed master's leftovers are cleaned at
the next start (and a directory another user made is left alone), and a
kill by the kernel's OOM killer outside any job limit is named `oom`.

They need a memory cgroup this user may make children in (cgroup v1's
memory hierarchy as root, as on the CI machine; or a delegated cgroup v2):
elsewhere they are skipped, saying so."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from phoenix.linux import cgroups
from tests.conftest import Master, phoenix_cli, wait_for
from tests.driver import PYTHON
from tests.test_long_jobs import APP, show

M = 1024**2


def own_memory_cgroup() -> tuple[str | None, str]:
    """(the directory of this process's memory cgroup if it may make children in it, else None; why not)."""
    own = cgroups.own_paths(cgroups.read("/proc/self/cgroup"))
    mounted = cgroups.mounts(cgroups.read("/proc/self/mountinfo"))
    for version in (cgroups.V2, cgroups.V1):
        if version not in own or version not in mounted:
            continue
        directory = cgroups.directory(*mounted[version], own[version])
        if directory is None or not cgroups.offers_memory(directory, cgroups.FILES[version]):
            continue
        probe = os.path.join(directory, f"pxprobe-{uuid.uuid4().hex[:8]}")
        try:
            os.mkdir(probe)
        except OSError as exc:
            return None, f"cannot make a cgroup in {directory} ({exc.strerror})"
        os.rmdir(probe)
        if version == cgroups.V2:
            return None, (f"{directory} is a writable cgroup v2, and these tests drive cgroup v1's files (v2 is "
                          "tested as pure decisions only: tests/unit/test_cgroups.py)")
        return directory, ""
    return None, "no memory cgroup controller visible"


OWN_CGROUP, WHY_NOT = own_memory_cgroup()
pytestmark = pytest.mark.skipif(OWN_CGROUP is None, reason=f"no writable memory cgroup here: {WHY_NOT}")


def group_of(master: Master) -> Path:
    """The master's group of attempt cgroups, from `phoenix status`."""
    enforcer = master.live()["master"]["memory_limits"]
    assert enforcer.startswith("cgroup v1 "), enforcer
    return Path(enforcer.removeprefix("cgroup v1 "))


def attempt_cgroups(group: Path) -> list[str]:
    return sorted(p.name for p in group.iterdir() if p.is_dir() and p.name.startswith("attempt-"))


def test_a_job_past_its_limit_is_killed_by_its_cgroup_before_twice_it_its_neighbour_finishes_the_cgroup_goes(
        master_factory, state_dir):
    master = master_factory(app=APP)
    group = group_of(master)
    assert group.parent == Path(OWN_CGROUP) and group.name.startswith("phoenix-")
    master.submit("tests.apps.longjobs:neighbour", {"s": 1.5}, key="neighbour")
    master.submit("tests.apps.longjobs:grows", {}, key="grows")
    grown = wait_for(lambda: (r := show(state_dir, "grows"))["state"] == "failed" and r, what="the memory kill")
    [attempt] = grown["attempt_list"]
    assert (attempt["outcome"], attempt["reason"]) == ("killed", "max_memory")
    assert attempt["max_rss_kb"] < 300 * 1024, attempt
    assert "the kernel's OOM killer ended it at its cgroup's 150M limit" in grown["error"]
    assert wait_for(lambda: show(state_dir, "neighbour")["state"] == "finished", what="the neighbour's end")
    wait_for(lambda: attempt_cgroups(group) == [], what="the attempt's cgroup removed")
    plain = phoenix_cli("status", state_dir=state_dir)
    assert f"memory limits: cgroup v1 {group}\n" in plain.stdout, plain.stdout
    master.stop()
    assert not group.exists()  # the group too, once the master stopped with no attempt running


def test_what_the_job_forks_is_limited_with_it(master_factory, state_dir):
    """The watchdog reads the job's own memory only: a grandchild grew to 300M and exited 0 before cgroups."""
    master = master_factory(app=APP)
    group = group_of(master)
    master.submit("tests.apps.longjobs:grandchild_grows", {}, key="fork")
    report = wait_for(lambda: (r := show(state_dir, "fork"))["state"] in ("finished", "failed") and r,
                      what="the job's end")
    assert (report["state"], report["result"]) == ("finished", {"grandchild": -signal.SIGKILL}), report
    wait_for(lambda: attempt_cgroups(group) == [], what="the attempt's cgroup removed")


def test_an_adopted_child_keeps_its_cgroup_across_a_usr2_and_the_new_master_removes_it_at_its_end(
        master_factory, state_dir, tmp_path):
    master = master_factory(app=APP)
    group = group_of(master)
    gate = tmp_path / "gate"
    master.submit("tests.apps.longjobs:limited_until", {"gate": str(gate)}, key="held")
    running = wait_for(lambda: master.live()["running"], what="the job running")
    [(_, child)] = running.items()
    [name] = wait_for(lambda: attempt_cgroups(group), what="its cgroup")
    assert cgroups.processes(str(group / name)) == [child["pid"]]
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2", what="the new image")
    assert cgroups.processes(str(group / name)) == [child["pid"]]  # not taken for a leftover
    assert group_of(master) == group
    gate.touch()
    report = wait_for(lambda: (r := show(state_dir, "held"))["state"] in ("finished", "failed") and r,
                      what="the job's end")
    assert report["state"] == "finished", report
    wait_for(lambda: attempt_cgroups(group) == [], what="its cgroup removed by the new image")


@pytest.fixture
def leftover_sleeper() -> Iterator[subprocess.Popen[bytes]]:
    sleeper = subprocess.Popen(["sleep", "60"])
    yield sleeper
    if sleeper.poll() is None:
        sleeper.kill()
    sleeper.wait()


def test_a_crashed_masters_leftover_cgroups_are_cleaned_at_start_and_a_foreign_one_is_left_alone(
        master_factory, state_dir, leftover_sleeper):
    first = master_factory(app=APP)
    group = group_of(first)
    first.signal(signal.SIGKILL)  # no clean-up on its way out
    first.wait_exit()
    empty, busy, foreign, other = (group / "attempt-999997", group / "attempt-999998", group / "attempt-999999",
                                   group / "not-an-attempt")
    for path in (empty, busy, foreign, other):
        path.mkdir()
    cgroups.write(str(busy / "cgroup.procs"), str(leftover_sleeper.pid))  # a job's grandchild, left behind
    os.chown(foreign, 65534, 65534)  # made by another user, with Phoenix's name
    try:
        second = master_factory(app=APP)
        assert group_of(second) == group
        assert leftover_sleeper.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: not empty.exists() and not busy.exists(), what="the leftovers removed")
        assert foreign.exists() and other.exists()
        assert "cgroup_leftover" in second.log()
    finally:
        for path in (foreign, other):
            if path.exists():
                path.rmdir()


LAUNCH_IN_CGROUP = ("import os, sys; open(os.path.join(sys.argv[1], 'cgroup.procs'), 'w').write(str(os.getpid())); "
                    "os.execv(sys.executable, [sys.executable, '-m', 'phoenix', *sys.argv[2:]])")


@pytest.fixture
def limited_cgroup() -> Iterator[Path]:
    """A cgroup with a 300M limit under this test's own (a master started in it runs out of memory there)."""
    assert OWN_CGROUP is not None
    path = Path(OWN_CGROUP) / f"pxtest-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    cgroups.write(str(path / "memory.limit_in_bytes"), str(300 * M))
    yield path
    for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_dir():
            cgroups.kill_all(str(sub), cgroups.FILES[cgroups.V1])
            wait_for(lambda s=sub: _removed(s), what=f"{sub} removed")
    cgroups.kill_all(str(path), cgroups.FILES[cgroups.V1])
    wait_for(lambda: _removed(path), what=f"{path} removed")


def _removed(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def test_a_child_the_kernel_oom_killer_ends_outside_any_job_limit_is_killed_reason_oom(
        master_factory, state_dir, limited_cgroup):
    """The master and its children run in a cgroup that runs out of memory; the job has no limit of its own."""
    master = master_factory(app=APP, launcher=(PYTHON, "-c", LAUNCH_IN_CGROUP, str(limited_cgroup)))
    assert f"/{limited_cgroup.name}\n" in cgroups.read(f"/proc/{master.pid}/cgroup")
    master.submit("tests.apps.longjobs:grows_unlimited", {}, key="oom")
    report = wait_for(lambda: (r := show(state_dir, "oom"))["state"] == "failed" and r, what="two OOM kills")
    assert [(a["outcome"], a["reason"]) for a in report["attempt_list"]] == [("killed", "oom")] * 2, report
    assert "the kernel's OOM killer ended it" in report["error"]
    # Each OOM kill the cgroup counts names one end: an operator's SIGKILL afterwards is not taken for one.
    master.submit("tests.apps.longjobs:neighbour", {"s": 30}, key="killed-by-hand")
    running = wait_for(lambda: master.live()["running"], what="the job running")
    os.kill(next(iter(running.values()))["pid"], signal.SIGKILL)
    report = wait_for(lambda: (r := show(state_dir, "killed-by-hand"))["attempt_list"][0]["outcome"] and r,
                      what="its end")
    assert (report["attempt_list"][0]["outcome"], report["attempt_list"][0]["reason"]) == ("signalled", "SIGKILL")
    # An OOM kill no job claims is forgotten after OOM_CLAIM_WINDOW: on the fake clock, in
    # tests/unit/test_memory_limits.py::test_an_oom_kill_no_job_claims_is_forgotten_after_the_window.

