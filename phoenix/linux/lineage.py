"""Which processes belong to which attempt: the sender of a signal, and the
processes a job daemonised out of its process group.

A job's processes are its attempt's process (pid P), everything in process
group P (the child calls setpgid(0, 0)), and every descendant of those. A
job that daemonises (setsid, double fork) leaves the process group, and its
grandchild would be reparented to init; so each job child is a child
subreaper: orphans of the job are reparented to the job's own process and
stay its descendants while it runs. Ancestry through /proc therefore finds
all of a live job's processes, whatever sessions or groups they made.

How they end with the attempt:
- the child, before it leaves through os._exit, kills its descendants (what
  is left of the job's daemons is its children by then);
- when the master signals an attempt (kill, stop) it signals the process
  group and every descendant outside it, and keeps a pidfd for each of those
  so that its conclusion can SIGKILL any that survived, even once they were
  reparented to the master (it is a subreaper too) after the job died.

A job killed from outside (the OOM killer, `kill -9` by hand) gets no such
walk: its escaped processes land on the master, which reaps them when they
exit but cannot tell whose they were.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Mapping

from phoenix.linux import procfs
from phoenix.linux.clock import SYSTEM

MAX_ANCESTRY = 64  # parents followed from a sender before giving up


def owning_attempt(sender: int, attempts: Mapping[int, object]) -> int | None:
    """The attempt pid whose job `sender` belongs to (`attempts` is keyed by
    attempt pid, which is also its process group id), or None. A sender
    already gone from /proc (reaped) cannot be traced and counts as none."""
    me = os.getpid()
    pid = sender
    for _ in range(MAX_ANCESTRY):
        if pid in attempts:
            return pid
        if pid <= 1 or pid == me:
            return None
        fields = procfs.stat_fields(pid)
        if fields is None:
            return None
        parent, group = int(fields[1]), int(fields[2])
        if group in attempts:
            return group
        pid = parent
    return None


def signal_escaped(root: int, signum: int, escaped: dict[int, int]) -> None:
    """Send `signum` to every descendant of `root` outside its process group
    (killpg reaches the rest), remembering a pidfd for each in `escaped`."""
    for pid, parent in procfs.descendants(root):
        if pid not in escaped:
            if procfs.process_group(pid) == root:
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue  # gone already
            if procfs.parent_pid(pid) != parent:  # the pid was reused between the listing and the open
                os.close(pidfd)
                continue
            escaped[pid] = pidfd
        try:
            signal.pidfd_send_signal(escaped[pid], signum)
        except OSError:
            pass  # exited; its pidfd goes at the attempt's end


def end_escaped(escaped: dict[int, int]) -> None:
    """SIGKILL the remembered escaped processes still alive, and close their pidfds."""
    for pidfd in escaped.values():
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        os.close(pidfd)
    escaped.clear()


def end_own_descendants(timeout: float = 2.0) -> None:
    """In a job child (a subreaper) about to exit: SIGKILL and reap every
    descendant. Our children are safe to kill by pid (unreaped, the pid cannot
    be reused); theirs are reparented to us as they die, so repeat until none
    is left, within `timeout` (a process stuck in the kernel does not hold up
    the job's exit: the master kills what is left with the attempt)."""
    try:  # the common case, a job that left no process: one system call
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return  # a subreaper with no child has no descendant left
    me = os.getpid()
    deadline = SYSTEM.monotonic() + timeout
    while (children := procfs.children(me)) and SYSTEM.monotonic() < deadline:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reaped = False
        for pid in children:
            try:
                reaped |= os.waitpid(pid, os.WNOHANG)[0] != 0
            except ChildProcessError:
                reaped = True  # reaped by one of the job's own threads
        if not reaped:
            time.sleep(0.001)
