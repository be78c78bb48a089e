"""`phoenix start --daemon`: detach with python-daemon, and make the launching
command wait until the master is ready, exiting non-zero with the reason if it
never gets there (DaemonContext on its own exits the launcher at once)."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

import daemon

from phoenix.linux.paths import StatePaths
from phoenix.master.handoff import READY_FD_VARIABLE, is_replacement


def run_daemonized(run: Callable[[], int], paths: StatePaths) -> int:
    if is_replacement():
        # USR2 re-runs our own command line, `--daemon` included: this image
        # replaces a master that is already detached, in place (same pid) or
        # as its fork-mode successor. Detaching again would fork away from the
        # pid in the pidfile and close the sockets and lock it was handed.
        return run()
    ready_read, ready_write = os.pipe()
    launcher_child = os.fork()
    if launcher_child == 0:
        os.close(ready_read)
        code = 1
        try:
            context = daemon.DaemonContext(
                working_directory=os.getcwd(),
                umask=0o022,
                files_preserve=[ready_write],
                signal_map={},  # the master installs its own handlers
                detach_process=True,
            )
            with context:
                os.environ[READY_FD_VARIABLE] = str(ready_write)  # the master writes "ready" here
                try:
                    code = run()
                except BaseException as exc:  # noqa: BLE001 - reported to the launcher, then exit
                    # Phoenix's own errors (a master already running, a socket held)
                    # say what is wrong in their text; anything else is named by its type.
                    own = type(exc).__module__.startswith("phoenix.") and str(exc)
                    message = str(exc) if own else "".join(traceback.format_exception_only(exc)).strip()
                    try:
                        # backslashreplace: the error may quote a path that is not UTF-8.
                        os.write(ready_write, f"error: {message}".encode("utf-8", "backslashreplace")[:4000])
                    except OSError:
                        pass
                    code = 2
        finally:
            os._exit(code)
    os.close(ready_write)
    chunks = []
    while chunk := os.read(ready_read, 4096):
        chunks.append(chunk)
    os.close(ready_read)
    os.waitpid(launcher_child, 0)  # the intermediate process DaemonContext forked from
    answer = b"".join(chunks).decode(errors="replace")
    if answer.startswith("ready"):
        print(f"phoenix: daemon ready; pid file {paths.pidfile}")
        return 0
    reason = answer.removeprefix("error: ") or f"it exited before it was ready; see {paths.root / 'phoenix.log'}"
    print(f"phoenix: error: the daemon did not start: {reason}", file=sys.stderr)
    return 1
