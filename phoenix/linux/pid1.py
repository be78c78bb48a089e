"""Phoenix as PID 1 of a PID namespace (a container's init, `docker run`).

What holds there as anywhere: signals reach the loop through the signalfd
(the handled ones are blocked, and the kernel never drops a blocked signal,
even for an init with no handler, so `docker stop`'s TERM from outside the
namespace is read like any other); every orphan of the namespace is
reparented to the master and reaped (`Reaper.reap`); an in-place
replacement execs in the same process and keeps PID 1.

What cannot work there: when init exits, the kernel SIGKILLs every other
process of its namespace. So the two ways of leaving jobs running while this
master exits, a fork-mode replacement (the new master is another process;
the old one, init, exits) and `phoenix stop --leave-running`, would kill the
jobs, and the new master with them. Both are refused with the reason.

The same kernel rule would kill a `phoenix stop` run inside the namespace (a
Kubernetes preStop hook, a `docker exec`) the moment the master exits: the
master tells it how it ended, then waits up to STOP_CLIENT_EXIT_WAIT seconds
for it to exit first.
"""

from __future__ import annotations

import os

FORK_REPLACEMENT_REFUSED = (
    'reexec = "fork" cannot work as PID 1 of a container: the old master (PID 1) exits, and the kernel then '
    'kills every process of the container, the new master and the running jobs included; set reexec = "inplace" '
    "(the default), which replaces the master in the same process and keeps PID 1"
)
LEAVE_RUNNING_REFUSED = (
    "--leave-running cannot work as PID 1 of a container: when the master (PID 1) exits, the kernel kills every "
    "process of the container, the running jobs included; use `phoenix stop` (jobs go back to pending) or "
    "`phoenix stop --drain` (they finish first)"
)

# Seconds an exiting PID 1 waits for the `phoenix stop` processes it answered to exit (they need milliseconds).
STOP_CLIENT_EXIT_WAIT = 2.0


def is_namespace_init() -> bool:
    """This process is PID 1 of its PID namespace: a container's init."""
    return os.getpid() == 1
