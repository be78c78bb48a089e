"""The `phoenix` command's entry point (the console script and `python -m phoenix`).

A new master image after USR2 runs the command line of the master it
replaces (`phoenix start ...`, see master/handoff.py) while the heartbeat
socket goes unread until it is ready: the blind window. That line was read
and checked by the CLI when the first image started, so here it is read again
without click, whose import and the CLI's commands are about a fifth of the
new image's imports. A line this reader does not know exactly, and any other
command, goes to the CLI (cli/main.py); so does a replacement's error, to be
worded as every command words it (click is imported only then).
"""

from __future__ import annotations

import os
import signal
import sys

# The signals a master handles (rules.commands.HANDLED_SIGNALS, which a test
# compares), spelt out here so that they are held before any other import.
EARLY_HELD = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
                        signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD})

if sys.argv[1:2] == ["start"] and os.getpid() == 1:
    # A container's init ignores every signal it has no handler for, so a TERM
    # (docker stop, a pod's deletion) sent before the master's signalfd is
    # read was lost, and the master came up and ran on. Held from here, before
    # the ~40 ms of imports below, it stays pending until the signalfd reads
    # it: a stop, once the master is up.
    signal.pthread_sigmask(signal.SIG_BLOCK, EARLY_HELD)

from typing import Any, Callable  # noqa: E402 - after the signals are held

from phoenix.master import handoff  # noqa: E402


def _choice(*allowed: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(value)
        return value
    return check


# `start`'s options as cli/main.py declares them: option -> (parameter, reader of its value);
# None: a flag without a value. tests/unit/test_entry.py holds the two to the same reading.
START_OPTIONS: dict[str, tuple[str, Callable[[str], Any] | None]] = {
    "--state-dir": ("state_dir", str),
    "--workers": ("workers", int),
    "--heartbeat-interval": ("heartbeat_interval", float),
    "--heartbeat-timeout": ("heartbeat_timeout", float),
    "--exit-when-done": ("exit_when_done", None),
    "--config": ("config_file", str),
    "--reexec": ("reexec", _choice("inplace", "fork")),
    "--log-level": ("log_level", _choice("debug", "info", "warning", "error")),
    "--log-format": ("log_format", _choice("text", "json")),
    "--log-file": ("log_file", str),
    "--metrics": ("metrics", str),
    "--daemon": ("daemon", None),
    "--store": ("store", str),
    "--node": ("node", str),
    "--lease-ttl": ("lease_ttl", float),
}


def read_start(args: list[str]) -> dict[str, Any] | None:
    """`start`'s parameters from its arguments, as click gives them to
    cli.main.start (unset: None; --daemon: False), or None for a line this
    reader does not know exactly (click then reads it)."""
    params: dict[str, Any] = {name: None for name, _ in START_OPTIONS.values()}
    params["daemon"] = False
    params["app"] = None
    rest = iter(args)
    options_end = False
    for arg in rest:
        if arg == "--" and not options_end:
            options_end = True
            continue
        if options_end or not arg.startswith("-") or arg == "-":
            if params["app"] is not None:
                return None  # one positional argument only
            params["app"] = arg
            continue
        option, has_value, value = arg.partition("=")
        spec = START_OPTIONS.get(option)
        if spec is None:
            return None  # --help, a short option, one this version does not know
        name, reader = spec
        if reader is None:
            if has_value:
                return None
            params[name] = True
            continue
        if not has_value:
            following = next(rest, None)
            if following is None:
                return None
            value = following
        try:
            params[name] = reader(value)
        except ValueError:
            return None
    return params


def _raise(error: Exception, **_params: Any) -> None:
    raise error


def main() -> None:
    args = sys.argv[1:]
    params = read_start(args[1:]) if args[:1] == ["start"] and handoff.is_replacement() else None
    if params is not None:
        from phoenix.cli.replacement import start_replacement

        try:
            code = start_replacement(params)
        except Exception as exc:  # noqa: BLE001 - worded as the CLI words it (friendly_errors), or re-raised there
            from phoenix.cli.main import friendly_errors

            friendly_errors(_raise)(exc, **params)
            raise
        if code is not None:
            sys.exit(code)
    from phoenix.cli.main import main as cli

    cli()
