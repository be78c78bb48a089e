"""Memory limits (`@app.job(max_memory="512M")`, the `max_memory` setting):
when the watchdog looks at a job again, and the decisions of per-job
cgroups (names, the writes of each version, why the kernel killed a job).
(How a limit is written, and the least one a job can have:
config.parse_max_memory.) Pure: tests/unit/test_memory_limits.py, test_cgroups.py."""

from __future__ import annotations

import os

from phoenix.linux.cgroups import V1, V2, Files
from phoenix.rules.states import KillReason

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


# -- per-job cgroups (master/cgroups.py; the files: linux/cgroups.py) ------------------

GROUP_PREFIX = "phoenix-"  # the master's own cgroup holds one group per state directory: phoenix-<hash>
ATTEMPT_PREFIX = "attempt-"  # in it, one per attempt with a limit: attempt-<attempt id>
MASTER_LEAF = "master"  # v2: the master's own leaf in its group (no process may sit beside child cgroups)
# v1 names a limit's kill by the cgroup's peak usage: the kernel charges in
# batches of pages, so a peak this close to the limit is the limit reached.
PEAK_SLACK = 1024**2


def group_name(state_dir: str) -> str:
    """The group of the master of `state_dir` (its real path): two masters in one cgroup never share one."""
    import hashlib  # here: it loads OpenSSL (~3 ms of a new image's start), needed only where cgroups are

    return GROUP_PREFIX + hashlib.sha256(state_dir.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def attempt_cgroup_name(attempt_id: int) -> str:
    return f"{ATTEMPT_PREFIX}{attempt_id}"


def attempt_of_cgroup(name: str) -> int | None:
    """The attempt id an attempt cgroup's name gives; None for any other name."""
    digits = name.removeprefix(ATTEMPT_PREFIX)
    if digits == name or not digits.isdigit() or digits != str(int(digits)):
        return None
    return int(digits)


def base_of(own_dir: str, group: str, version: int) -> str:
    """The cgroup Phoenix's group goes in: the master's own, or, once a v2
    master moved itself into its group's leaf (an earlier image of it, before
    a USR2), the one above its group."""
    if version == V2 and own_dir.endswith(f"/{group}/{MASTER_LEAF}"):
        return own_dir[: -len(f"/{group}/{MASTER_LEAF}")]
    return own_dir


def v2_setup(base: str, group: str, base_subtree: str, group_subtree: str) -> list[tuple[str, str]]:
    """v2: the writes that give the attempts' cgroups a memory controller.
    A cgroup that hands controllers to its children may hold no process of
    its own, so the master first moves into its group's leaf; then memory is
    enabled in the base and in the group (each only if not already on).
    `*_subtree`: their cgroup.subtree_control. Returns (file, value) in order;
    "{pid}" in a value is the master's pid."""
    group_dir = os.path.join(base, group)
    writes = [(os.path.join(group_dir, MASTER_LEAF, "cgroup.procs"), "{pid}")]
    if "memory" not in base_subtree.split():
        writes.append((os.path.join(base, "cgroup.subtree_control"), "+memory"))
    if "memory" not in group_subtree.split():
        writes.append((os.path.join(group_dir, "cgroup.subtree_control"), "+memory"))
    return writes


def limit_writes(files: Files, limit: int, swap_accounted: bool) -> list[tuple[str, str]]:
    """(file, value) to write, in order, for a limit of `limit` bytes that swap cannot stretch:
    v1 limits memory, then memory + swap to the same (where swap is accounted);
    v2 limits memory, and swap to none."""
    writes = [(files.limit, str(limit))]
    if files.version == V1 and swap_accounted:
        writes.append((files.swap_limit, str(limit)))
    elif files.version == V2 and swap_accounted:
        writes.append((files.swap_limit, "0"))
    return writes


def kernel_kill(files: Files, events: dict[str, int], peak: int | None, limit: int) -> KillReason | None:
    """Why the kernel killed a process of an attempt's cgroup, from its
    counters: its own limit (max_memory), another OOM (the host's, or a
    cgroup above: oom), or None if the OOM killer killed none there.
    v2 counts the limit's OOMs apart (`oom`); v1 tells them by the peak."""
    if events.get("oom_kill", 0) == 0:
        return None
    if files.version == V2:
        at_limit = events.get("oom", 0) > 0
    else:
        at_limit = peak is not None and peak + PEAK_SLACK >= limit
    return KillReason.MAX_MEMORY if at_limit else KillReason.OOM
