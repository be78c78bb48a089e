"""`phoenix start` in a new image after USR2, without click: entered from
cli/entry.py (the blind window pays for no CLI) or from cli/main.py's start."""

from __future__ import annotations

import sys
from typing import Any

from phoenix import config as config_module
from phoenix.app import AppError, check_pools, load_app
from phoenix.config import Config, ConfigError
from phoenix.linux.paths import StatePaths
from phoenix.linux.untrusted import visible
from phoenix.master import handoff


def start_replacement(params: dict[str, Any]) -> int | None:
    """`phoenix start`'s replacement path, given its parameters as click
    gives them (cli/entry.py's read_start); None when the line names no app,
    which cli/main.py's start then refuses as it refuses it in a first image."""
    flags = dict(params)
    app, config_file, daemon = flags.pop("app"), flags.pop("config_file"), flags.pop("daemon")
    app_spec = replacement_app(app, config_file, flags)
    if not app_spec:
        return None
    flags["app"] = app_spec
    return run_replacement(app_spec, config_file, flags, daemon)


def replacement_app(app: str | None, config_file: str | None, flags: dict[str, Any]) -> str | None:
    """The app a new image after USR2 runs: the command line's, else the
    configuration's, else the one the old image ran (phoenix.toml's `app`
    removed since the start, or the file unreadable now): a replacement that
    exits for want of an app leaves its running jobs without a master."""
    if app:
        return app
    try:
        configured = config_module.load(None, config_file, flags, validate=False).app
    except ConfigError:
        configured = None  # the full load after the app's import says what is wrong (the image runs degraded)
    if configured:
        return configured
    ran = handoff.handed_over_config().app
    if ran:
        print(f"phoenix: warning: no app given on the command line or in the configuration now: running the one "
              f"the old image ran ({visible(ran)}); name it (`phoenix start {visible(ran)}` or app in phoenix.toml) "
              "so that a fresh start finds it too", file=sys.stderr)
    return ran


def default_daemon_log(flags: dict[str, Any], config_file: str | None, app_settings: dict[str, Any]) -> None:
    """A daemon logs to STATE_DIR/phoenix.log unless told otherwise; so does
    each replacement image of it (USR2 re-runs the same command line)."""
    state_dir = config_module.load(app_settings, config_file, flags, validate=False).state_dir
    flags["log_file"] = flags.get("log_file") or str(StatePaths(state_dir).root / "phoenix.log")


def run_replacement(app_spec: str, config_file: str | None, flags: dict[str, Any], daemon: bool) -> int:
    """A new image after USR2: whatever it cannot load, it must not exit, or
    the running jobs are left without a master (see handoff.py)."""
    from phoenix.master.arbiter import run_master  # here: the CLI's other commands need no master

    try:
        application = load_app(app_spec)
        if daemon:
            default_daemon_log(flags, config_file, application.settings)
        config = config_module.load(application.settings, config_file, flags)
        check_pools(application, config.pools)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever the new code does, this image must not exit
        # (a module that calls sys.exit() at import, or raises past the loader, too)
        reason = str(exc) if isinstance(exc, (AppError, ConfigError)) else f"{type(exc).__name__}: {exc}"
        if handoff.is_fork_successor():
            # Fork mode: the old master still runs the good code. Tell it, and go.
            handoff.report_failure_to_old_master(reason)
            print(f"phoenix: error: {visible(reason, multiline=True)}", file=sys.stderr)
            return 1
        config = handoff.handed_over_config()

        def keep_config() -> Config:
            raise ConfigError("no app is loaded (the master is degraded): send USR2 to load fixed code")

        return run_master(None, app_spec, config, keep_config, config_file, degraded_reason=reason)

    def load_config() -> Config:
        return config_module.load(application.settings, config_file, flags)

    return run_master(application, app_spec, config, load_config, config_file)
