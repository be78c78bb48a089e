"""The `phoenix` command: start, submit, status, stop, reload, check."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from phoenix import config as config_module
from phoenix import control, pidfile
from phoenix.app import AppError, decode_params, encode_params, load_app, resolve_target
from phoenix.config import ConfigError
from phoenix.journal import Journal, JournalError, journal_present
from phoenix.paths import StatePaths, StateDirError
from phoenix.metrics import MetricsError
from phoenix.sockets import SocketBusy

EXIT_NOT_RUNNING = 3  # as systemctl status


def fail(message: str, code: int = 2) -> None:
    click.echo(f"phoenix: error: {message}", err=True)
    sys.exit(code)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input becomes one clear paragraph and exit 2; nothing in the journal is touched."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except pidfile.AlreadyRunning as exc:
            fail(str(exc), 1)
        except (AppError, ConfigError, JournalError, StateDirError, SocketBusy, MetricsError) as exc:
            fail(str(exc))
        except control.ControlError as exc:
            fail(str(exc), 1)
        except PermissionError as exc:  # e.g. another user's state directory
            fail(f"permission denied: {exc.filename or exc}; run phoenix as the user that owns the state directory")

    return wrapper


state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None,
    help="Directory of the pidfile, sockets and journal (default ./.phoenix, or state_dir in config).",
)


def _state_paths(state_dir: str | None, config_file: str | None = None) -> StatePaths:
    if state_dir:
        return StatePaths(state_dir)
    return StatePaths(config_module.load(None, config_file, {}).state_dir)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="phoenix-procmaster")
def main() -> None:
    """Phoenix: a forking process master with heartbeats and zero-downtime replacement."""


@main.command()
@click.argument("app", required=False)
@state_dir_option
@click.option("--workers", type=int, help="Concurrent child slots.")
@click.option("--heartbeat-interval", type=float, help="Seconds between a child's beats.")
@click.option("--heartbeat-timeout", type=float, help="No beat for this long: kill and re-run.")
@click.option("--exit-when-done", is_flag=True, default=None, help="Batch mode: exit 0 when every job finished, 1 if any failed.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML configuration file.")
@click.option("--reexec", type=click.Choice(["inplace", "fork"]), help="How USR2 replaces the master.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", type=click.Choice(["text", "json"]))
@click.option("--log-file", type=click.Path(dir_okay=False))
@click.option("--metrics", help="Serve Prometheus metrics on HOST:PORT (a bare PORT binds 127.0.0.1).")
@click.option("--daemon", is_flag=True, help="Detach (python-daemon); logs go to --log-file or STATE_DIR/phoenix.log.")
@friendly_errors
def start(app: str | None, state_dir: str | None, config_file: str | None, daemon: bool, **flags: Any) -> None:
    """Run a master for APP ("package.module:app")."""
    from phoenix.master import run_master

    flags["state_dir"] = state_dir
    base = config_module.load(None, config_file, {k: v for k, v in flags.items()})
    app_spec = app or base.app
    if not app_spec:
        fail("no app given: name it as `phoenix start package.module:app`, or set app in phoenix.toml")
    paths = StatePaths(base.state_dir)
    paths.ensure()
    application = load_app(app_spec)
    flags["app"] = app_spec
    config_module.load(application.settings, config_file, flags)  # validate before detaching
    if daemon:
        from phoenix.daemon import run_daemonized

        flags["log_file"] = flags.get("log_file") or str(paths.root / "phoenix.log")
        sys.exit(run_daemonized(lambda: run_master(application, app_spec, flags, config_file), paths))
    sys.exit(run_master(application, app_spec, flags, config_file))


@main.command()
@click.argument("app")
@state_dir_option
@click.option("--config", "config_file", type=click.Path(dir_okay=False))
@friendly_errors
def check(app: str, state_dir: str | None, config_file: str | None) -> None:
    """Preflight: import APP, validate the configuration and check the journal (what USR2 runs before exec)."""
    application = load_app(app)
    config = config_module.load(application.settings, config_file, {"state_dir": state_dir, "app": app})
    for target in application.jobs:
        resolve_target(target)
    journal_path = StatePaths(config.state_dir).journal
    if journal_present(journal_path):
        with Journal(journal_path, create=False, verify=True):
            journal_note = "journal sound"
    else:
        journal_note = "no journal yet"
    click.echo(f"ok: {app} imports, {len(application.jobs)} job(s), configuration valid, {journal_note}")


@main.command()
@click.argument("target")
@click.argument("params", required=False, default="null")
@click.option("--key", help="Idempotency key (default: a hash of target and parameters).")
@state_dir_option
@friendly_errors
def submit(target: str, params: str, key: str | None, state_dir: str | None) -> None:
    """Record a job durably; a running master starts it when a slot is free."""
    params_json = encode_params(decode_params(params))
    resolve_target(target)
    paths = _state_paths(state_dir)
    paths.ensure()
    with Journal(paths.journal) as journal:
        job_id, created = journal.submit(target, params_json, key)
    try:
        control.request(paths.control_socket, {"cmd": "wake"}, timeout=2.0)
    except control.ControlError:
        pass  # no master running: the next one starts it
    click.echo(json.dumps({"id": job_id, "created": created}))


@main.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.option("--watch", "watch_interval", type=float, is_flag=False, flag_value=1.0, default=None,
              help="Refresh in place every N seconds (default 1) until Ctrl-C.")
@friendly_errors
def status(state_dir: str | None, as_json: bool, watch_interval: float | None) -> None:
    """Show the master and the jobs; exit 0 if a master runs, 3 if none does."""
    from phoenix.status import collect, render, watch

    paths = _state_paths(state_dir)
    if watch_interval is not None:
        watch(paths, watch_interval)
    report, running = collect(paths)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render(report)
    sys.exit(0 if running else EXIT_NOT_RUNNING)


@main.command()
@state_dir_option
@click.option("--drain", is_flag=True, help="Start nothing new, let running jobs finish (QUIT).")
@click.option("--leave-running", is_flag=True, help="Exit the master; children keep running for the next one.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for the master to exit.")
@friendly_errors
def stop(state_dir: str | None, drain: bool, leave_running: bool, timeout: float) -> None:
    """Stop the master (TERM children, jobs go back to pending) and wait for it to exit."""
    if drain and leave_running:
        fail("choose one of --drain and --leave-running")
    paths = _state_paths(state_dir)
    pid = pidfile.live_master_pid(paths.pidfile, paths.lockfile)
    if pid is None:
        fail(f"no master is running on {paths.root}", EXIT_NOT_RUNNING)
    mode = "drain" if drain else "leave" if leave_running else "term"
    control.request(paths.control_socket, {"cmd": "stop", "mode": mode})
    deadline = time.monotonic() + timeout
    while pidfile.live_master_pid(paths.pidfile, paths.lockfile) is not None:
        if time.monotonic() > deadline:
            fail(f"the master (pid {pid}) has not exited after {timeout} s", 1)
        time.sleep(0.05)
    click.echo(f"stopped master pid {pid}")


@main.command()
@state_dir_option
@click.option("--wait/--no-wait", default=False, help="Wait until the new master is ready; exit 1 if it failed.")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@friendly_errors
def reload(state_dir: str | None, wait: bool, timeout: float) -> None:
    """Replace the master with the code now on disk (as kill -USR2)."""
    paths = _state_paths(state_dir)
    reply = control.request(paths.control_socket, {"cmd": "reload"})
    generation = reply["generation"]
    if not wait:
        click.echo(f"reload requested (generation {generation})")
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            live = control.request(paths.control_socket, {"cmd": "status"}, timeout=2.0)["master"]
        except control.ControlError:
            continue  # between images, or the old master exiting (fork mode)
        result = live.get("reload") or {}
        if live["generation"] > generation:
            click.echo(f"ready: generation {live['generation']}, pid {live['pid']}")
            return
        if result.get("state") == "failed" and result.get("from_generation") == generation:
            fail(f"reload failed: {result.get('error')}", 1)
    fail(f"no new master was ready within {timeout} s", 1)


@main.command()
@state_dir_option
@click.option("--html", "html_file", type=click.Path(dir_okay=False), required=True,
              help="Write a self-contained timeline page here.")
@friendly_errors
def report(state_dir: str | None, html_file: str) -> None:
    """Write the journal's history as a timeline: a bar per attempt, markers for replacements."""
    from phoenix.report import write

    paths = _state_paths(state_dir)
    if not journal_present(paths.journal):
        fail(f"no journal at {paths.journal}: nothing has run with this --state-dir")
    attempts = write(paths.journal, Path(html_file))
    click.echo(f"wrote {html_file}: {attempts} attempts")
