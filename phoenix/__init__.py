"""Phoenix: a forking process master. One child per job, watched through
heartbeats on a Unix socket; hung children are killed and their jobs re-run;
the master replaces itself on SIGUSR2 while its children keep running.

Linux and CPython 3.11+ only: pidfd, SO_PEERCRED, signalfd and /proc are load-bearing.
"""

import sys as _sys
from typing import TYPE_CHECKING, Any

# sys, not the platform module: every new image (each replacement) runs this,
# and importing platform costs milliseconds of the blind window.
if not _sys.platform.startswith("linux") or _sys.implementation.name != "cpython" or _sys.version_info < (3, 11):
    raise ImportError(
        f"Phoenix runs on Linux with CPython 3.11 or newer; this is {_sys.platform} with "
        f"{_sys.implementation.name} {_sys.version.split()[0]}. It relies on pidfd, SO_PEERCRED, signalfd and /proc."
    )

if TYPE_CHECKING:
    from phoenix.app import App, AppError, BatchInfo, JobInfo
    from phoenix.child.longjobs import Interrupted
    from phoenix.child.run import checkpoint, current_job, heartbeat, progress, stopping
    from phoenix.client import Client
    from phoenix.compat import HeartbeatChild, HeartbeatParent
    from phoenix.errors import Conflict, InternalError, PhoenixError, StateError, Unavailable, UsageError
    from phoenix.rules.schedule import ScheduleError
    from phoenix.store.base import KeyConflict

# Each name is imported on first use (PEP 562): the fork server imports the
# app, and so this package, and every module it holds is memory each job
# child's fork copies page tables for. An app that only makes an App and its
# jobs never loads the journal, the client or the compatibility layer there.
_HOMES = {"App": "phoenix.app", "AppError": "phoenix.app", "BatchInfo": "phoenix.app", "JobInfo": "phoenix.app",
          "current_job": "phoenix.child.run", "heartbeat": "phoenix.child.run", "Client": "phoenix.client",
          "HeartbeatChild": "phoenix.compat", "HeartbeatParent": "phoenix.compat",
          "KeyConflict": "phoenix.store.base", "ScheduleError": "phoenix.rules.schedule",
          "Interrupted": "phoenix.child.longjobs",
          "checkpoint": "phoenix.child.run", "progress": "phoenix.child.run", "stopping": "phoenix.child.run",
          # The error tree (errors.py): catch PhoenixError for any of Phoenix's, a category for a kind.
          **dict.fromkeys(("PhoenixError", "UsageError", "StateError", "Conflict", "Unavailable", "InternalError"),
                          "phoenix.errors")}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'phoenix' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = ["App", "AppError", "BatchInfo", "Client", "JobInfo", "HeartbeatChild", "HeartbeatParent", "KeyConflict",
           "ScheduleError", "current_job", "heartbeat", "Interrupted", "checkpoint", "progress", "stopping",
           "PhoenixError", "UsageError", "StateError", "Conflict", "Unavailable", "InternalError"]
__version__ = "0.2.0"
