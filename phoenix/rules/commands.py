"""One command table for signals and the control socket: `kill -QUIT` and
`phoenix stop --drain` are the same command and run the same code
(dispatch.Dispatcher.execute), whichever way they arrive."""

from __future__ import annotations

import signal
from enum import StrEnum
from typing import Any

from phoenix.errors import UsageError


class Command(StrEnum):
    STOP = "stop"  # TERM the children, jobs back to pending
    DRAIN = "drain"  # start nothing, let running jobs finish
    LEAVE = "leave"  # exit, children keep running for the next master
    RELOAD = "reload"  # replace the master with the code on disk (USR2)
    RELOAD_CONFIG = "reload_config"  # HUP
    SLOT_MORE = "slot_more"  # TTIN
    SLOT_LESS = "slot_less"  # TTOU
    REOPEN_LOGS = "reopen_logs"  # USR1
    STATUS = "status"
    WAKE = "wake"  # a job was submitted: look for pending jobs now
    CANCEL = "cancel"  # {"cmd": "cancel", "keys": [...]}: pending ones cancelled, running ones killed


SIGNAL_COMMANDS: dict[int, Command] = {
    signal.SIGTERM: Command.STOP,
    signal.SIGINT: Command.STOP,
    signal.SIGQUIT: Command.DRAIN,
    signal.SIGUSR2: Command.RELOAD,
    signal.SIGHUP: Command.RELOAD_CONFIG,
    signal.SIGTTIN: Command.SLOT_MORE,
    signal.SIGTTOU: Command.SLOT_LESS,
    signal.SIGUSR1: Command.REOPEN_LOGS,
}

# Every signal the master handles: the commands', and SIGCHLD (reap; never
# SIG_IGN, which would survive an exec).
HANDLED_SIGNALS: tuple[int, ...] = (*SIGNAL_COMMANDS, signal.SIGCHLD)

# The control socket's wire form: {"cmd": "stop", "mode": "drain"} and so on.
_STOP_MODES = {"term": Command.STOP, "drain": Command.DRAIN, "leave": Command.LEAVE}
_REQUESTS = {"status": Command.STATUS, "wake": Command.WAKE, "reload": Command.RELOAD, "cancel": Command.CANCEL}


class BadRequest(UsageError, ValueError):
    """A control request that names no known command."""


def from_request(request: dict[str, Any]) -> Command:
    name = request.get("cmd")
    if name == "stop":
        mode = request.get("mode", "term")
        if not isinstance(mode, str) or mode not in _STOP_MODES:
            raise BadRequest(f"unknown stop mode {mode!r}; known: {', '.join(_STOP_MODES)}")
        interrupt_after(request)  # refused here, before anything is done
        return _STOP_MODES[mode]
    if name == "cancel":
        keys = request.get("keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise BadRequest("cancel needs \"keys\": a non-empty list of job keys")
    if isinstance(name, str) and name in _REQUESTS:
        return _REQUESTS[name]
    raise BadRequest(f"unknown command {name!r}; known: status, wake, stop, reload, cancel")


# The longest wait a command asks (a drain's deadline, `--timeout`, `--watch`): a year.
# Past about 30 years a socket's timeout overflows.
MAX_WAIT_SECONDS = 365 * 24 * 3600.0


def interrupt_after(request: dict[str, Any]) -> float | None:
    """A drain's `"interrupt_after"`: the seconds after which the master
    interrupts the jobs still running (None: they run however long they
    take). Only a drain has one; JSON's NaN and Infinity, a negative number
    or more than a year are refused."""
    seconds = request.get("interrupt_after")
    if seconds is None:
        return None
    if request.get("mode") != "drain":
        raise BadRequest("interrupt_after is a drain's deadline: send it with \"mode\": \"drain\"")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_WAIT_SECONDS:
        # (NaN fails every comparison, so the range check refuses it too.)
        raise BadRequest(f"interrupt_after must be seconds from 0 to {MAX_WAIT_SECONDS:g}, not {seconds!r}")
    return float(seconds)
