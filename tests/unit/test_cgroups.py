"""The pure decisions of per-job memory cgroups (linux/cgroups.py's parsers,
rules/memory.py's names and writes), for both versions: where the master's
cgroup is, which files each version writes, how a v2 master sets up its
group, and why the kernel killed a job. cgroup v2 is exercised only here
(the CI host's memory controller is on v1: tests/test_cgroups.py)."""

from __future__ import annotations

import pytest

from phoenix.linux.cgroups import FILES, V1, V2, counters, directory, mounts, own_paths
from phoenix.rules.memory import (
    MASTER_LEAF,
    attempt_cgroup_name,
    attempt_of_cgroup,
    base_of,
    group_name,
    kernel_kill,
    limit_writes,
    v2_setup,
)
from phoenix.rules.states import KillReason

M = 1024**2

HYBRID = """9:name=systemd:/
4:memory:/process_api/6581c665
2:cpu,cpuacct:/
0::/
"""
UNIFIED = "0::/system.slice/phoenix.service\n"

MOUNTINFO = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
# A container with its own cgroup namespace sees its cgroup as /; one without
# sees the host's path, with only its own part mounted.
CONTAINER_MOUNTINFO = ("612 600 0:30 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n"
                       "613 600 0:31 / /with\\040space rw - cgroup cgroup rw,memory,nosuid\n")


def test_the_masters_own_cgroup_of_each_version():
    assert own_paths(HYBRID) == {V1: "/process_api/6581c665", V2: "/"}
    assert own_paths(UNIFIED) == {V2: "/system.slice/phoenix.service"}
    assert own_paths("garbage\n5:cpu:/x\n") == {}


def test_the_mounts_of_the_memory_controller_and_of_v2():
    assert mounts(MOUNTINFO) == {V1: ("/sys/fs/cgroup/memory", "/"), V2: ("/sys/fs/cgroup/unified", "/")}
    assert mounts(CONTAINER_MOUNTINFO) == {V2: ("/sys/fs/cgroup", "/docker/abc"), V1: ("/with space", "/")}


@pytest.mark.parametrize(("point", "root", "path", "expected"), [
    ("/sys/fs/cgroup/memory", "/", "/process_api/x", "/sys/fs/cgroup/memory/process_api/x"),
    ("/sys/fs/cgroup", "/", "/", "/sys/fs/cgroup"),  # a cgroup namespace: the container's own is its root
    ("/sys/fs/cgroup", "/docker/abc", "/docker/abc/sub", "/sys/fs/cgroup/sub"),
    ("/sys/fs/cgroup", "/docker/abc", "/docker/abc", "/sys/fs/cgroup"),
    ("/sys/fs/cgroup", "/docker/abc", "/docker/abcd", None),  # a sibling that only shares the prefix
    ("/sys/fs/cgroup", "/docker/abc", "/other", None),
])
def test_the_directory_of_a_cgroup_under_its_mount(point, root, path, expected):
    assert directory(point, root, path) == expected


def test_the_oom_counters_of_either_file():
    assert counters("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n") == {"oom_kill_disable": 0, "under_oom": 0,
                                                                         "oom_kill": 2}
    assert counters("low 0\nhigh 3\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n")["oom"] == 1
    assert counters("bad\noom_kill x\n\n") == {}


def test_each_master_has_its_own_group_and_attempt_ids_round_trip():
    assert group_name("/srv/a/.phoenix").startswith("phoenix-") and len(group_name("/x")) == len("phoenix-") + 12
    assert group_name("/srv/a/.phoenix") != group_name("/srv/b/.phoenix")
    assert attempt_of_cgroup(attempt_cgroup_name(42)) == 42
    for name in ("attempt-", "attempt-x1", "attempt-007", "attempt--1", MASTER_LEAF, "42", "phoenix-attempt-1"):
        assert attempt_of_cgroup(name) is None, name


def test_a_v2_master_already_in_its_groups_leaf_finds_the_base_above_it():
    group = group_name("/srv/.phoenix")
    assert base_of(f"/sys/fs/cgroup/app.service/{group}/{MASTER_LEAF}", group, V2) == "/sys/fs/cgroup/app.service"
    assert base_of("/sys/fs/cgroup/app.service", group, V2) == "/sys/fs/cgroup/app.service"
    # another state directory's leaf is not ours; v1 never moves the master
    assert base_of(f"/c/phoenix-000000000000/{MASTER_LEAF}", group, V2) == f"/c/phoenix-000000000000/{MASTER_LEAF}"
    assert base_of(f"/c/{group}/{MASTER_LEAF}", group, V1) == f"/c/{group}/{MASTER_LEAF}"


def test_v2_moves_the_master_into_its_leaf_before_it_enables_memory_where_it_is_off():
    assert v2_setup("/b", "phoenix-g", "cpu", "") == [("/b/phoenix-g/master/cgroup.procs", "{pid}"),
                                                      ("/b/cgroup.subtree_control", "+memory"),
                                                      ("/b/phoenix-g/cgroup.subtree_control", "+memory")]
    assert v2_setup("/b", "phoenix-g", "cpu memory", "memory") == [("/b/phoenix-g/master/cgroup.procs", "{pid}")]


def test_each_version_writes_a_limit_that_swap_cannot_stretch():
    assert limit_writes(FILES[V1], 150 * M, swap_accounted=True) == [("memory.limit_in_bytes", str(150 * M)),
                                                                    ("memory.memsw.limit_in_bytes", str(150 * M))]
    assert limit_writes(FILES[V1], 150 * M, swap_accounted=False) == [("memory.limit_in_bytes", str(150 * M))]
    assert limit_writes(FILES[V2], 150 * M, swap_accounted=True) == [("memory.max", str(150 * M)),
                                                                    ("memory.swap.max", "0")]


@pytest.mark.parametrize(("version", "events", "peak", "expected"), [
    (V1, {"oom_kill": 0}, 150 * M, None),  # the limit reached, but nothing OOM-killed: not the kernel
    (V1, {"oom_kill": 1}, 150 * M, KillReason.MAX_MEMORY),
    (V1, {"oom_kill": 1}, 150 * M - 4096, KillReason.MAX_MEMORY),  # charged in batches of pages
    (V1, {"oom_kill": 1}, 60 * M, KillReason.OOM),  # far below its limit: the host's OOM
    (V1, {"oom_kill": 1}, None, KillReason.OOM),
    (V2, {"oom": 1, "oom_kill": 1}, None, KillReason.MAX_MEMORY),
    (V2, {"oom": 0, "oom_kill": 1}, None, KillReason.OOM),
    (V2, {"oom": 3, "oom_kill": 0}, None, None),  # its limit reached, reclaimed, none killed
])
def test_why_the_kernel_killed_a_job_in_its_cgroup(version, events, peak, expected):
    assert kernel_kill(FILES[version], events, peak, 150 * M) == expected
