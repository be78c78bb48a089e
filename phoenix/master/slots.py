"""No more job slots than the limits carry: the open-file limit (a child the
master cannot watch for want of a descriptor would be killed as silent, or
never started), and the limits on tasks (each child is two: the job and its
heartbeat thread; a fork refused for want of a pid leaves jobs pending).
Pure arithmetic in rules/shortage.py; the limits themselves are read, and
raised where a process may raise its own, here, once, at start."""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path

from phoenix import log
from phoenix.config import ConfigError
from phoenix.rules.shortage import (
    TaskLimit,
    fds_needed,
    slots_for_tasks,
    slots_that_fit,
    task_refusal,
    tightest,
)

PROC_SYS_KERNEL = Path("/proc/sys/kernel")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class SlotLimit:
    def __init__(self, wanted: int) -> None:
        self.cap = wanted  # the most slots the limits carry (known once fit() ran)
        self.fd_cap = wanted
        self.task_limit: TaskLimit | None = None  # the tightest limit on tasks (None: none known)

    def fit(self, wanted: int, replacement: bool = False) -> int:
        """At start: raise the open-file limit (and RLIMIT_NPROC), and return
        the slots they carry of the `wanted`; too few for one slot, or a limit
        on tasks too low for the `wanted`: refuse to start (ConfigError, one line).
        A `replacement` image refuses nothing: the old master is gone and its
        children run, so it must stay to adopt them (whatever their count);
        its slots are lowered instead, said once, as a reload's are."""
        limit = _raise_fd_limit(wanted)
        self.fd_cap = slots_that_fit(limit)
        if self.fd_cap == 0 and wanted > 0 and not replacement:
            raise ConfigError(f"the open-file limit ({limit}) leaves no room for a job slot: a master needs "
                              f"{fds_needed(1)} for one, {fds_needed(wanted)} for workers = {wanted}; raise "
                              "the hard limit (ulimit -Hn, systemd LimitNOFILE=, docker run --ulimit nofile=)")
        task_limits = read_task_limits()
        refusal = task_refusal(wanted, task_limits)
        if refusal is not None and not replacement:
            raise ConfigError(refusal)
        self.task_limit = tightest(task_limits)
        self.cap = self.fd_cap
        if self.task_limit is not None:
            self.cap = min(self.cap, slots_for_tasks(self.task_limit.value))
        return self.allow(wanted)

    def allow(self, wanted: int) -> int:
        """The slots of the `wanted` (config, reload, TTIN/TTOU) the limits carry; said when fewer."""
        if wanted > self.cap:
            if self.cap == self.fd_cap:
                reason = f"the open-file limit allows {self.cap} slots"
                fix = (f"raise the hard limit on open files to {fds_needed(wanted)} (ulimit -Hn, systemd "
                       "LimitNOFILE=, docker run --ulimit nofile=)")
            else:
                assert self.task_limit is not None  # (the only other cap)
                reason = f"{self.task_limit.setting} ({self.task_limit.value}) allows {self.cap} slots"
                fix = self.task_limit.fix
            log.event(logging.WARNING, "workers_lowered", asked=wanted, workers=self.cap, reason=reason, fix=fix)
        return max(0, min(wanted, self.cap))


def _raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-file limit to the hard one (adopted children each
    hold a pidfd; 1,000 of them outgrow the usual soft limit of 1,024), and
    the hard one to what `wanted` slots need where this process may (root,
    CAP_SYS_RESOURCE; up to fs.nr_open); return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # (never infinite: the kernel caps it at nr_open)
    needed = fds_needed(wanted)
    if hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (OSError, ValueError):
            pass  # not ours to raise: the slots are lowered to what it carries
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def read_task_limits() -> list[TaskLimit]:
    """Every limit on the tasks this master and its children may run that
    can be read here (one that cannot be read is left out: the fork that
    meets it is then the master's shortage, backed off and said once). The
    soft RLIMIT_NPROC is raised to the hard one on the way."""
    limits = []
    for name, fix in (("pid_max", "sysctl -w kernel.pid_max="), ("threads-max", "sysctl -w kernel.threads-max=")):
        value = _read_int(PROC_SYS_KERNEL / name)
        if value is not None:
            limits.append(TaskLimit(f"kernel.{name}", value, f"raise it ({fix}N)"))
    nproc = _raise_nproc_limit()
    if nproc is not None:
        limits.append(TaskLimit("RLIMIT_NPROC", nproc, "raise the hard limit on processes (ulimit -Hu, systemd "
                                                       "LimitNPROC=, docker run --ulimit nproc=)"))
    pids_max = cgroup_pids_max(_read_text(Path("/proc/self/cgroup")) or "")
    if pids_max is not None:
        limits.append(TaskLimit("the cgroup's pids.max", pids_max, "raise it (systemd TasksMax=, docker run "
                                                                   "--pids-limit, podman --pids-limit)"))
    return limits


def _raise_nproc_limit() -> int | None:
    """Raise the soft limit on the user's processes to the hard one; the
    limit now in force, or None where none applies: unlimited, or the real
    uid is root, whose forks the kernel never holds to it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass  # kept as it is: the lower soft limit is the one in force
    if soft == resource.RLIM_INFINITY or os.getuid() == 0:
        return None
    return soft


def cgroup_pids_max(proc_self_cgroup: str, root: Path = CGROUP_ROOT) -> int | None:
    """The lowest pids.max of this process's cgroup and its ancestors (cgroup
    v2, or v1's pids controller), None if none is set ("max") or readable.
    Tasks of other processes in the cgroup count against it too."""
    for line in proc_self_cgroup.splitlines():
        _number, controllers, path = line.split(":", 2)
        if controllers == "":
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
        elif "pids" in controllers.split(","):
            base = root / "pids"
        else:
            continue
        lowest = None
        parts = [part for part in path.split("/") if part]
        for depth in range(len(parts), 0, -1):
            value = _read_int(base.joinpath(*parts[:depth]) / "pids.max")
            if value is not None and (lowest is None or value < lowest):
                lowest = value
        if lowest is not None:
            return lowest
    return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    """The number in a /proc or /sys file; None when missing, unreadable or "max"."""
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
