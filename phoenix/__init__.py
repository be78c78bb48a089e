"""Phoenix: a forking process master. One child per job, watched through
heartbeats on a Unix socket; hung children are killed and their jobs re-run;
the master replaces itself on SIGUSR2 while its children keep running.

Linux and CPython 3.11+ only: pidfd, SO_PEERCRED, signalfd and /proc are load-bearing.
"""

import sys as _sys

# sys, not the platform module: every new image (each replacement) runs this,
# and importing platform costs milliseconds of the blind window.
if not _sys.platform.startswith("linux") or _sys.implementation.name != "cpython" or _sys.version_info < (3, 11):
    raise ImportError(
        f"Phoenix runs on Linux with CPython 3.11 or newer; this is {_sys.platform} with "
        f"{_sys.implementation.name} {_sys.version.split()[0]}. It relies on pidfd, SO_PEERCRED, signalfd and /proc."
    )

from phoenix.app import App, AppError, JobInfo  # noqa: E402
from phoenix.child import current_job, heartbeat  # noqa: E402
from phoenix.client import Client  # noqa: E402
from phoenix.compat import HeartbeatChild, HeartbeatParent  # noqa: E402
from phoenix.journal import KeyConflict  # noqa: E402

__all__ = ["App", "AppError", "Client", "JobInfo", "HeartbeatChild", "HeartbeatParent", "KeyConflict", "current_job",
           "heartbeat"]
__version__ = "0.1.0"
