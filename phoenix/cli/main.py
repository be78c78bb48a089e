"""The `phoenix` command: start, submit, status, stop, reload, check, and the
operator's jobs, show, logs, retry, cancel, prune."""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

from phoenix import config as config_module
from phoenix.app import AppError, check_pools, decode_params, load_app, resolve_target
from phoenix.cli import actions
from phoenix.cli.replacement import default_daemon_log, replacement_app, run_replacement
from phoenix.config import Config
from phoenix.errors import Conflict, PhoenixError, StateError, Unavailable, UsageError
from phoenix.linux import pidfile
from phoenix.linux.paths import StatePaths, check_parents
from phoenix.linux.untrusted import check_key, visible
from phoenix.master import handoff
from phoenix.rules.commands import MAX_WAIT_SECONDS
from phoenix.rules.durations import parse_duration
from phoenix.rules.schedule import due_time, parse_priority
from phoenix.store.base import SQLITE, JobState, RetryRefused, Store, is_url, redact
from phoenix.store.batches import check_name as check_batch_name
from phoenix.store.open import open_store
from phoenix.store.sqlite import journal_present
from phoenix.wire import control

EXIT_NOT_RUNNING = 3  # as systemctl status
# `phoenix status`: a master holds the lock but does not answer (stopped by
# SIGSTOP or a paused VM, or stuck): alive, so not 3; its state unknown, as LSB's 4.
EXIT_NOT_RESPONDING = 4


def fail(message: str, code: int = 2) -> NoReturn:
    # It may quote what a user or a job wrote (a reason, a path): shown, never obeyed.
    click.echo(f"phoenix: error: {visible(message, multiline=True)}", err=True)
    sys.exit(code)


# A disk full or failing, out of descriptors or memory: said in one line, never a traceback.
_SHORTAGES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE,
                        errno.ENOMEM})


# What each category of phoenix.errors costs the command: bad input and damaged
# state exit 2; a request at odds with the state (a master already running, a
# key that names another job) and a store or master out of reach exit 1.
# InternalError is left out: a bug's traceback is what its report needs.
EXIT_CODES: dict[type[PhoenixError], int] = {UsageError: 2, StateError: 2, Conflict: 1, Unavailable: 1}


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """An error of Phoenix's becomes one clear paragraph and its category's
    exit code (EXIT_CODES); nothing in the journal is touched."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except control.NoAnswer as exc:  # delivered, unanswered: its effect is unknown, as status's exit 4
            fail(str(exc), EXIT_NOT_RESPONDING)
        except PhoenixError as exc:
            code = next((code for category, code in EXIT_CODES.items() if isinstance(exc, category)), None)
            if code is None:
                raise
            if isinstance(exc, AppError) and exc.detail and _debug(kwargs):
                click.echo(exc.detail, err=True)
            fail(str(exc), code)
        except PermissionError as exc:  # e.g. another user's state directory
            fail(f"permission denied: {exc.filename or exc}; run phoenix as the user that owns the state directory")
        except OSError as exc:
            if exc.errno not in _SHORTAGES:
                raise
            # The host's shortage, not a mistake: one line, and a supervisor's restart may find room.
            where = f" ({visible(str(exc.filename))})" if exc.filename else ""
            fail(f"cannot go on: {exc.strerror}{where}; free some and try again", 1)

    return wrapper


def _debug(flags: dict[str, Any]) -> bool:
    """--log-level debug (start), or PHOENIX_LOG_LEVEL=debug (any command):
    show the traceback behind an error, importlib's frames and all."""
    level = flags.get("log_level") or os.environ.get("PHOENIX_LOG_LEVEL") or ""
    return level.lower() == "debug"


store_option = click.option(
    "--store", default=None,
    help='Job store: "sqlite" (STATE_DIR/journal.db, the default) or a postgresql:// URL shared by many masters '
         "(or PHOENIX_STORE, or store in phoenix.toml).",
)
state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None,
    help="Directory of the pidfile, sockets and journal (default ./.phoenix, or state_dir in config).",
)
# Bounded, so that a number past what the stores take (SQLite's and
# PostgreSQL's 64-bit integers, an attempt's 32-bit number) is click's one
# line, not a store's traceback.
HOW_MANY = click.IntRange(min=1, max=1_000_000_000)
JOB_ID = click.IntRange(min=0, max=2**63 - 2)
ATTEMPT_NUMBER = click.IntRange(min=1, max=2**31 - 1)


class Seconds(click.ParamType[float]):
    """A wait on the command line that becomes a socket's timeout or a
    deadline: a finite number of seconds, at most a year (MAX_WAIT_SECONDS).
    float() takes "nan", "inf" and "-inf": the range check refuses all three
    (nan fails every comparison); 0 only where it means something
    (`--drain --timeout 0`: interrupt now)."""

    name = "seconds"

    def __init__(self, zero_ok: bool = False) -> None:
        self.zero_ok = zero_ok

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            # ASCII only: float() takes any script's digits ("٥", "１"), which a person does not read as a wait.
            seconds = float(value) if isinstance(value, (int, float)) or str(value).isascii() else math.nan
        except (TypeError, ValueError):
            seconds = math.nan
        lowest = 0.0 if self.zero_ok else 0.001
        if not lowest <= seconds <= MAX_WAIT_SECONDS:  # (nan: False)
            self.fail(f"{value!r} is not a number of seconds from {lowest:g} to {MAX_WAIT_SECONDS:.0f} (a year): "
                      f"give e.g. 30", param, ctx)
        return seconds



_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """One line on stderr, once per command however often it loads the settings."""
    if message not in _warned:
        _warned.add(message)
        click.echo(f"phoenix: warning: {message}", err=True)


def _settings(flags: dict[str, Any], app_settings: dict[str, Any] | None = None) -> Config:
    """The settings of a command that needs only the state directory (and the
    store): what else is wrong in the configuration is a warning, never a
    lock-out (config.load)."""
    return config_module.load(app_settings, None, flags, validate=False, warn=_warn_once)


def _state_paths(state_dir: str | None, app_settings: dict[str, Any] | None = None,
                 strict: bool = False) -> StatePaths:
    """Where a master of this configuration keeps its state, resolved as
    `start` resolves it (the same sources, in the same order), once checked
    to be a directory of this user's alone (or not there yet). `strict`: a
    configuration file with an unknown or mistyped setting is refused."""
    flags = {"state_dir": state_dir}
    if strict:
        settings = config_module.load(app_settings, None, flags, validate=False)
    else:
        settings = _settings(flags, app_settings)
    paths = StatePaths(settings.state_dir)
    paths.check_trusted()
    return paths


def _nothing_here(paths: StatePaths, state_dir: str | None) -> str:
    """What to add to "nothing has run here" when the configuration names an
    app that keeps its state elsewhere (App(state_dir=...)): a status or stop
    run beside it would otherwise report no master while its daemon runs."""
    if state_dir is not None or journal_present(paths.journal):
        return ""
    app_spec = _settings({}).app
    if not app_spec:
        return ""
    here = os.stat(".")
    if here.st_uid not in (0, os.geteuid()) or here.st_mode & 0o022:
        # The app is imported from here: code another user could have put here is not run for a hint.
        return (f"; the app {app_spec} is named in the configuration: if its App(...) sets state_dir, give "
                f"--state-dir (it was not imported to see: this directory is another user's or writable by others)")
    try:
        application = load_app(app_spec)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - only a hint: whatever the app does, say so and go on
        return (f"; the app {app_spec} named in the configuration could not be imported to see whether it sets "
                f"its own state_dir ({type(exc).__name__}): give --state-dir")
    app_root = StatePaths(_settings({}, application.settings).state_dir).root
    if app_root == paths.root:
        return ""
    return f"; the app {app_spec} keeps its state in {app_root} (its App(state_dir=...)): give --state-dir {app_root}"


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
@click.option("--exit-when-done", is_flag=True, default=None,
              help="Batch mode: exit 0 when every job finished, 1 if any failed or was cancelled, 128+N if signal N "
                   "stopped it first. Judged on the jobs this run ended (and those it adopted), not on jobs "
                   "that failed in an earlier run.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML configuration file.")
@click.option("--reexec", type=click.Choice(["inplace", "fork"]), help="How USR2 replaces the master.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", type=click.Choice(["text", "json"]))
@click.option("--log-file", type=click.Path(dir_okay=False))
@click.option("--metrics", help="Serve Prometheus metrics on HOST:PORT (a bare PORT binds 127.0.0.1).")
@click.option("--daemon", is_flag=True, help="Detach (python-daemon); logs go to --log-file or STATE_DIR/phoenix.log.")
@store_option
@click.option("--node", help="This master's name in a shared store (default: host name and state directory).")
@click.option("--lease-ttl", type=float, help="Seconds a master's lease in a shared store lasts unrenewed (30).")
@friendly_errors
def start(app: str | None, state_dir: str | None, config_file: str | None, daemon: bool, **flags: Any) -> None:
    """Run a master for APP ("package.module:app").

    \b
    Exit status of a service (the default):
      0      stopped by TERM, INT, QUIT or `phoenix stop`: a clean end
    With --exit-when-done (batch mode), it answers "did the batch finish?":
      0      every job finished
      1      every job ended, some failed or were cancelled
             ("every job": those pending or running, and those this run
             ended or adopted; a failure of an earlier run does not count)
      128+N  signal N stopped it while jobs were pending or running:
             TERM 143, INT 130, QUIT 131 (`phoenix stop` counts as TERM,
             `phoenix stop --drain` as QUIT); the jobs stay in the journal
    Either way, 2 means bad input (app, configuration, state directory) and
    1 that a master already runs on the state directory.
    """
    from phoenix.master.arbiter import run_master

    flags["state_dir"] = state_dir
    if handoff.is_replacement():  # (an app removed from phoenix.toml since the start: the one that ran)
        app_spec = replacement_app(app, config_file, flags)
    else:
        app_spec = app or config_module.load(None, config_file, flags, validate=False).app
    if not app_spec:
        fail("no app given: name it as `phoenix start package.module:app`, or set app in phoenix.toml")
    flags["app"] = app_spec
    if handoff.is_replacement():
        # A new image after USR2: whatever it cannot load, it must not exit,
        # or the running jobs are left without a master (see handoff.py).
        sys.exit(run_replacement(app_spec, config_file, flags, daemon))
    application = load_app(app_spec)
    if daemon:
        default_daemon_log(flags, config_file, application.settings)
    config = config_module.load(application.settings, config_file, flags)
    check_pools(application, config.pools)
    paths = StatePaths(config.state_dir)
    paths.ensure()
    if config.log_file:  # appended to as this user: no other user may plant a link at its name
        check_parents(Path(config.log_file).absolute(), "the log file")

    def load_config() -> Config:
        return config_module.load(application.settings, config_file, flags)

    if daemon:
        from phoenix.cli.daemon import run_daemonized

        sys.exit(run_daemonized(lambda: run_master(application, app_spec, config, load_config, config_file), paths))
    sys.exit(run_master(application, app_spec, config, load_config, config_file))


@main.command()
@click.argument("app")
@state_dir_option
@click.option("--config", "config_file", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True,
              help="Pass even if jobs in the journal use targets this code lacks (those jobs fail when they start).")
@store_option
@friendly_errors
def check(app: str, state_dir: str | None, config_file: str | None, force: bool, store: str | None) -> None:
    """Preflight: import APP, validate the configuration, and make sure the
    code has every job target that pending or running jobs in the journal use
    (what USR2 and `phoenix reload` run before exec), and check the journal. Exit 0 if all is well,
    2 if the app or configuration is broken, 1 if the code lacks a target
    that queued jobs use (named, with how many jobs use it)."""
    from phoenix.master import release

    application = load_app(app)
    config = config_module.load(application.settings, config_file,
                                {"state_dir": state_dir, "app": app, "store": store})
    check_pools(application, config.pools)
    for target in application.jobs:
        resolve_target(target)
    paths = StatePaths(config.state_dir)
    paths.check_trusted()  # what `start` would refuse: a file, another user's directory
    journal_path = paths.journal
    in_use: list[tuple[str, int, int]] = []
    if is_url(config.store):  # the queue every master of the shared store claims from
        with open_store(config.store, journal_path) as shared:
            in_use = shared.targets_in_use()
        journal_note = "shared store reachable"
    elif journal_present(journal_path):
        # "never": the preflight of a USR2 runs this while the old master runs on the journal.
        with open_store(SQLITE, journal_path, create=False, verify=True, upgrade="never") as journal:
            in_use = journal.targets_in_use()
        journal_note = "journal sound"
    else:
        journal_note = "no journal yet"
    missing = release.missing_targets(in_use)
    if missing and not force:
        fail(release.refusal(missing), 1)
    if missing:
        click.echo(release.forced_warning(missing), err=True)
    click.echo(f"ok: {app} imports, {len(application.jobs)} job(s), configuration valid, {journal_note}")


@main.command()
@click.argument("target")
@click.argument("params", required=False, default="null")
@click.option("--key", help="Idempotency key (default: a hash of target and parameters).")
@click.option("--in", "run_in", metavar="SECONDS", help="Due this many seconds from now (scheduled until then).")
@click.option("--at", "run_at", metavar="ISO8601",
              help="Due at this time, with an offset or Z: 2026-12-07T10:00:00+01:00 (a past time: at once).")
@click.option("--priority", metavar="N", default="0", help="Higher runs first (default 0).")
@click.option("--batch", "batch_name", metavar="NAME",
              help="Submit into this batch (opened by its first job); `phoenix batch close NAME` closes it.")
@state_dir_option
@store_option
@friendly_errors
def submit(target: str, params: str, key: str | None, run_in: str | None, run_at: str | None, priority: str,
           batch_name: str | None, state_dir: str | None, store: str | None) -> None:
    """Record a job durably; a running master starts it when a slot is free.

    \b
    TARGET is "package.module:function" (a function decorated with @app.job)
    or "package.module:Class.method" (a phoenix.HeartbeatChild). PARAMS is
    JSON, given to the job as it is.

    submit imports TARGET's module, as a master would, for two reasons: to
    refuse at once a target that is not a job (rather than a job that fails
    when it starts), and to find the state directory its App(...) sets, if
    any. So run it where the job code and its dependencies can be imported
    (the app's directory, or PYTHONPATH). To submit from code that does not
    have the job code (a web app), use phoenix.Client, which does not import
    it.

    The same KEY with the same target and parameters again is a no-op
    ("created": false); with another target, other parameters, another due
    time or another priority it is refused with exit 1, saying what differs.

    --in or --at: the job is `scheduled` until then, and starts within a
    second after (see docs/scheduling.md). --priority: of the jobs due, the
    highest priority starts first, then the earliest due, then the first
    submitted.

    With a shared store (--store postgresql://..., PHOENIX_STORE, or store
    in phoenix.toml) TARGET is only a name and is not imported: submit from
    any machine, with or without the job code; the master that claims the
    job resolves it."""
    from phoenix.client import Client

    if key:
        check_key(key)  # before the state directory is made or touched
    if batch_name is not None:
        check_batch_name(batch_name)
    job_params = decode_params(params)
    rank = parse_priority(priority)
    due_time(time.time(), run_in, run_at)  # refused here, before anything is imported or opened
    shared = _settings({"store": store, "state_dir": state_dir}).store
    if shared != "sqlite":
        client = Client(store=shared, warn=_warn_once)
    else:
        spec = resolve_target(target)
        if spec.app is not None:  # pools a master of its app would refuse (unknown, bad capacity): refused now
            check_pools(spec.app, _settings({"state_dir": state_dir}, spec.app.settings).pools)
        paths = _state_paths(state_dir, app_settings=spec.app.settings if spec.app is not None else None)
        client = Client(state_dir=str(paths.root), warn=_warn_once)
    if batch_name is None:
        job_id, created = client.submit(target, job_params, key, run_in=run_in, run_at=run_at, priority=rank)
        click.echo(json.dumps({"id": job_id, "created": created}))
        return
    job_id, created = client.batch(batch_name).submit(target, job_params, key, run_in=run_in, run_at=run_at,
                                                      priority=rank)
    click.echo(json.dumps({"id": job_id, "created": created, "batch": batch_name}))


@main.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.option("--watch", "watch_interval", type=Seconds(), is_flag=False, flag_value=1.0, default=None,
              help="Refresh in place every N seconds (default 1) until Ctrl-C.")
@store_option
@click.option("--node", help="With a shared store: this master (node) and its jobs only.")
@click.option("--limit", type=HOW_MANY, default=None,
              help="With --json: jobs per page (default 1000).")
@click.option("--after", type=JOB_ID, default=None,
              help="With --json: the page after this job id (the next_after of the page before).")
@friendly_errors
def status(state_dir: str | None, as_json: bool, watch_interval: float | None, store: str | None,
           node: str | None, limit: int | None, after: int | None) -> None:
    """Show the master, the job counts, the last failures and the running
    jobs; exit 0 if a master runs, 3 if none does, 4 if one holds the lock
    but does not answer (stopped, or stuck).

    --json adds a page of every job, in id order: at most --limit (1000),
    and "next_after", the id to pass as --after for the next page (null on
    the last page).

    With a shared store: every master (node, pid, generation, state, lease,
    slots) and the running jobs with their node; exit 0 if any master holds
    a live lease, 3 if none does."""
    from phoenix.cli.status import (
        JSON_PAGE,
        NOT_RESPONDING,
        NoJournal,
        collect,
        collect_shared,
        render,
        render_shared,
        watch,
    )

    if (limit is not None or after is not None) and not as_json:
        fail("--limit and --after page the jobs of `phoenix status --json`: add --json")
    page = (after or 0, limit or JSON_PAGE) if as_json else None
    shared = _settings({"store": store, "state_dir": state_dir}).store
    if shared != "sqlite":
        from phoenix.store.base import check_setting

        check_setting(shared)
        report, live = collect_shared(shared, node, page)
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            render_shared(report)
        sys.exit(0 if live else EXIT_NOT_RUNNING)
    paths = _state_paths(state_dir)
    try:
        if watch_interval is not None:
            watch(paths, watch_interval)
        report, running = collect(paths, page)
    except NoJournal as exc:
        fail(str(exc) + _nothing_here(paths, state_dir), EXIT_NOT_RUNNING)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render(report)
    if running:
        sys.exit(0)
    sys.exit(EXIT_NOT_RESPONDING if report["master"]["state"] == NOT_RESPONDING else EXIT_NOT_RUNNING)


@main.command()
@state_dir_option
@click.option("--drain", is_flag=True, help="Start nothing new, let running jobs finish (QUIT).")
@click.option("--leave-running", is_flag=True, help="Exit the master; children keep running for the next one.")
@click.option("--timeout", type=Seconds(zero_ok=True),
              help="Seconds to wait for the master to exit (default 60); with --drain, for its jobs to finish, "
              "after which the master interrupts the rest politely (TERM: phoenix.Interrupted, KILL after "
              "kill_grace), even if this command is gone (0: at once). Without it a drain lets its jobs run "
              "however long they take.")
@friendly_errors
def stop(state_dir: str | None, drain: bool, leave_running: bool, timeout: float | None) -> None:
    """Stop the master (TERM children, jobs go back to pending) and wait for it to exit."""
    drain_time = timeout if drain else None  # the drain's time is the operator's; the master holds it
    if drain and leave_running:
        fail("choose one of --drain and --leave-running")
    if timeout == 0 and not drain:
        fail("--timeout 0 leaves no time to see the master exit: give seconds above 0 (or --drain --timeout 0 "
             "to interrupt the running jobs at once)")
    paths = _state_paths(state_dir)
    pid = _running_master(paths)
    if pid is None:
        fail(f"no master is running on {paths.root}{_nothing_here(paths, state_dir)}", EXIT_NOT_RUNNING)
    mode = "drain" if drain else "leave" if leave_running else "term"
    exit_wait = STOP_WAIT if timeout is None or drain_time is not None else timeout
    sent = control.stop(paths.control_socket, mode, drain_time)
    try:
        if sent.reply.get("already_stopping"):
            # Its jobs were interrupted already and keep their kill_grace: nothing is drained, nothing cut short.
            click.echo(f"the master (pid {pid}) is stopping already (its jobs are being interrupted, each within "
                       "kill_grace): waiting for it to exit", err=True)
            drain_time = None
        if drain_time is not None:
            # The master's own count (a drain under way may have an earlier deadline); an older master holds none.
            held = sent.reply.get("interrupt_after")
            earlier = isinstance(held, (int, float)) and not math.isclose(held, drain_time, rel_tol=1e-6,
                                                                          abs_tol=1e-6)
            drain_time = min(drain_time, held) if isinstance(held, (int, float)) else drain_time
            sent, why_not = _wait_out_the_drain(paths, sent, drain_time, held is not None, earlier)
            if why_not:  # no interrupt mends it: said at once
                fail(f"the master (pid {pid}) has not exited after {_duration(drain_time)}{why_not}", 1)
        deadline = time.monotonic() + exit_wait
        ending, still_running = sent.wait_ending(exit_wait)
    finally:
        sent.close()
    waited = exit_wait if drain_time is None else drain_time + exit_wait
    if still_running:
        fail(f"the master (pid {pid}) has not exited after {_duration(waited)}{_why_still_running(paths)}", 1)
    while pidfile.live_master_pid(paths.pidfile, paths.lockfile) is not None:
        if time.monotonic() > deadline:
            fail(f"the master (pid {pid}) has not exited after {_duration(waited)}", 1)
        time.sleep(0.05)
    if ending is not None and ending.get("error"):
        why = visible(str(ending["error"]))  # a crash's words may be anything
        fail(f"the master (pid {pid}) stopped with exit code {ending.get('exit_code')}: {why}", 1)
    if ending is None and sent.reply.get("report_exit"):
        fail(f"the master (pid {pid}) ended without saying how (killed, or crashed): see its log", 1)
    click.echo(f"stopped master pid {pid}")


def _wait_out_the_drain(paths: StatePaths, sent: control.StopSent, drain_time: float,
                        master_holds_it: bool, earlier: bool) -> tuple[control.StopSent, str]:
    """Wait the drain's time for the master to end; if it still runs then,
    say that its jobs are interrupted: the master interrupts them itself at
    its deadline, and a master of an older release is asked to (a stop
    during a drain). `earlier`: the deadline is an earlier stop's, sooner
    than this one asked (drain_time is then what was left of it). Returns
    the stop to wait on next, and why the master still runs if no interrupt
    mends it (outcomes its journal cannot take yet), else ""."""
    if drain_time == 0:  # interrupted at once, as asked (none may have run): nothing to say
        return (sent if master_holds_it else _stop_now(paths, sent)), ""
    _ending, still_running = sent.wait_ending(drain_time)
    if not still_running:
        return sent, ""
    why_not = _why_still_running(paths)
    if why_not:
        return sent, why_not
    # Each job may save a checkpoint and return within kill_grace, and resumes at the next start.
    when = (f"at the deadline of a drain asked earlier ({_duration(drain_time)} after this stop)" if earlier
            else f"after {_duration(drain_time)} of draining")
    click.echo(f"jobs still running {when}: interrupting them", err=True)
    return (sent if master_holds_it else _stop_now(paths, sent)), ""


def _duration(seconds: float) -> str:
    """Seconds as a person reads them: to a hundredth (3.81 s, 100 s), never 9.96806e-10 s."""
    return "less than 0.01 s" if seconds < 0.005 else f"{round(seconds, 2):g} s"


def _stop_now(paths: StatePaths, draining: control.StopSent) -> control.StopSent:
    """A master of an older release holds no drain's deadline: a stop during its drain interrupts its jobs."""
    draining.close()
    return control.stop(paths.control_socket, "term")


STOP_WAIT = 60.0  # seconds `phoenix stop` waits for the master to exit, unless --timeout says



def _running_master(paths: StatePaths) -> int | None:
    """The running master's pid, or None when none runs; a master between
    two images (fork mode: the pidfile is phoenix.pid.oldbin until the new
    one is ready) is waited for, never taken for no master."""
    try:
        return actions.running_master(paths)
    except pidfile.NoPidfile as exc:
        fail(str(exc), 1)


def _why_still_running(paths: StatePaths) -> str:
    """What a master that does not stop waits for, if it says."""
    try:
        live = control.request(paths.control_socket, {"cmd": "status", "running": False}, timeout=2.0)["master"]
    except (control.ControlError, KeyError, TypeError):
        return ""
    held, error = live.get("unrecorded_outcomes") or 0, live.get("journal_error")
    error = visible(str(error)) if error else None  # an OS's or a database's words: shown as text
    if held:
        return (f": it cannot record {held} job outcome(s) yet ({error}), keeps them, and exits once they are "
                f"recorded: free space or fix {paths.root}")
    if error:
        return f": its journal cannot be written ({error}); it exits once it can record what it holds"
    return ""


@main.command()
@state_dir_option
@click.option("--wait/--no-wait", default=False, help="Wait until the new master is ready; exit 1 if it failed.")
@click.option("--timeout", type=Seconds(), default=120.0, show_default=True)
@click.option("--force", is_flag=True,
              help="Replace even if the new code lacks job targets that queued jobs use (those jobs fail).")
@friendly_errors
def reload(state_dir: str | None, wait: bool, timeout: float, force: bool) -> None:
    """Replace the master with the code now on disk (as kill -USR2).

    The preflight (`phoenix check`) must pass first; it refuses code that
    lacks a job target pending or running jobs use. --force overrides that
    check only; a plain USR2 never does."""
    paths = _state_paths(state_dir, strict=True)  # the new image reads the same file: refuse it here, first
    if _running_master(paths) is None:
        fail(f"no master is running on {paths.root}: nothing to reload (start one with `phoenix start`)"
             f"{_nothing_here(paths, state_dir)}", EXIT_NOT_RUNNING)
    reply = control.request(paths.control_socket, {"cmd": "reload", "force": force})
    generation = control.reply_field(reply, "generation", int)
    if not wait:
        click.echo(f"reload requested (generation {generation})")
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            # The master alone (not a line per running child): only its generation and reload state count here.
            poll = control.request(paths.control_socket, {"cmd": "status", "running": False}, timeout=2.0)
            live = control.reply_field(poll, "master", dict)
            now = control.reply_field(live, "generation", int)
        except (control.MalformedReply, control.ForeignServer):
            raise  # something other than a master between images answers: say so now
        except control.ControlError:
            if not pidfile.lock_held(paths.lockfile):
                fail("the master exited during the replacement (its new image could not start): see its log; "
                     "its running jobs are adopted by the next `phoenix start`", 1)
            continue  # between images, or the old master exiting (fork mode)
        result = live.get("reload")
        result = result if isinstance(result, dict) else {}
        if now > generation and live.get("state") == "degraded":
            fail(f"reload failed: the new code could not be loaded; the master (pid {live.get('pid')}) keeps "
                 f"watching the running jobs but starts none until a later reload loads good code:\n"
                 f"{visible(str(live.get('degraded_reason')), multiline=True)}", 1)
        if now > generation:
            click.echo(f"ready: generation {now}, pid {live.get('pid')}")
            return
        if result.get("state") == "failed" and result.get("from_generation") == generation:
            fail(f"reload failed: {visible(str(result.get('error')), multiline=True)}", 1)
    fail(f"no new master was ready within {timeout} s", 1)


@main.command()
@state_dir_option
@store_option
@click.option("--html", "html_file", type=click.Path(dir_okay=False), required=True,
              help="Write a self-contained timeline page here.")
@click.option("--limit", type=HOW_MANY, default=1000, show_default=True,
              help="Draw the jobs that changed last, at most this many.")
@friendly_errors
def report(state_dir: str | None, store: str | None, html_file: str, limit: int) -> None:
    """Write the journal's history as a timeline: a bar per attempt, markers for replacements."""
    from phoenix.cli.report import write

    setting = _settings({"store": store, "state_dir": state_dir}).store
    paths, journal = _existing_journal(state_dir, store)  # the PostgreSQL store has the same timeline reads
    with journal:
        check_parents(Path(html_file).absolute(), "the report")  # as --log-file: no other user may swap the way
        where = redact(setting) if is_url(setting) else paths.root
        attempts = write(journal, f"Phoenix timeline: {where}", Path(html_file), limit)
    click.echo(f"wrote {html_file}: {attempts} attempts")


# -- the operator's commands: jobs, show, retry, cancel, prune ---------------------------------


def _existing_journal(state_dir: str | None, store: str | None = None, *,
                      writes: bool = False) -> tuple[StatePaths, Store]:
    """The journal of the state directory, never created by a command that
    only looks at it; or the shared store the `store` setting names. A
    command that `writes` reads the whole journal first (SQLite's quick_check,
    as `phoenix start` does), so that it refuses a damaged one as `start` and
    `status` do instead of writing into it."""
    setting = _settings({"store": store, "state_dir": state_dir}).store
    paths = _state_paths(state_dir)
    if setting == "sqlite":
        _require_journal(paths, state_dir)
    return paths, _open_journal(setting, paths, writes)


def _open_journal(setting: str, paths: StatePaths, writes: bool) -> Store:
    """The store `setting` names, opened as a command that only looks (never
    creating the journal, nor refused by a weak synchronous_commit), or as
    one that `writes` (the journal read through first)."""
    return open_store(setting, paths.journal, create=False, verify=writes, reads_only=not writes)


def _require_journal(paths: StatePaths, state_dir: str | None) -> None:
    if not journal_present(paths.journal):
        fail(f"no journal in {paths.root}: nothing has run here{_nothing_here(paths, state_dir)}")


def _seconds(text: str | None) -> float | None:
    return None if text is None else parse_duration(text)


@main.command()
@state_dir_option
@click.option("--state", type=click.Choice([str(state) for state in JobState]), help="Only jobs in this state.")
@click.option("--target", help="Only jobs of this target (module:function).")
@click.option("--since", help="Only jobs changed in this last while: 45s, 30m, 1h, 7d.")
@click.option("--batch", "batch_name", metavar="NAME", help="Only the jobs of this batch (see `phoenix batches`).")
@click.option("--limit", type=HOW_MANY, default=50, show_default=True, help="Show at most this many.")
@click.option("--after", "cursor", help="The page after this one: the next_after the page before printed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@store_option
@friendly_errors
def jobs(state_dir: str | None, state: str | None, target: str | None, since: str | None, batch_name: str | None,
         limit: int, cursor: str | None, as_json: bool, store: str | None) -> None:
    """List jobs, last changed first: key, target, state, attempts, last
    outcome and reason, and the time since the job last changed. A page at a
    time (--limit); --json prints "next_after", the --after of the next page."""
    from phoenix.cli.jobsview import BadCursor, jobs_report, parse_cursor, render_jobs

    seconds = _seconds(since)  # bad input is refused before the journal is opened
    try:
        after = None if cursor is None else parse_cursor(cursor)
    except BadCursor as exc:
        fail(str(exc))
    if batch_name is not None:
        check_batch_name(batch_name)  # a name no batch can have: one line, not the store's error
    _paths, journal = _existing_journal(state_dir, store)
    with journal:
        if batch_name is not None:
            from phoenix.cli.batchview import batch_jobs_report

            report = batch_jobs_report(journal, batch_name, state=state, target=target, since=seconds, limit=limit,
                                       after=after)
        else:
            report = jobs_report(journal, state=state, target=target, since=seconds, limit=limit, after=after)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render_jobs(report)


@main.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@store_option
@friendly_errors
def pools(state_dir: str | None, as_json: bool, store: str | None) -> None:
    """Each global resource pool: its slots in use (by running attempts, of
    every master sharing the store) and its capacity (the last master to
    start set it). See docs/scheduling.md."""
    _paths, journal = _existing_journal(state_dir, store)
    with journal:
        rows = journal.pools_status()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("no pools: no master has started with App(pools=...) or [pools] here")
    else:
        for row in rows:
            click.echo(visible(f"{row['pool']}  {row['used']}/{row['capacity']}"))


@main.command()
@click.argument("app_spec", metavar="[APP]", required=False)
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@store_option
@friendly_errors
def schedules(app_spec: str | None, state_dir: str | None, as_json: bool, store: str | None) -> None:
    """List the app's periodic schedules (@app.periodic): each one's next
    tick, and its last tick's job and state. APP ("module:app") defaults to
    the app of the master that ran last in this state directory; with a
    shared store, give it. A schedule changed in code takes effect with the
    next image (USR2); this shows the code APP imports now."""
    from phoenix.cli.schedules import render_schedules, schedules_report

    _paths, journal = _existing_journal(state_dir, store)
    with journal:
        spec = app_spec or (journal.meta("app") if not journal.shared else None)
        if not spec:
            fail("name the app: phoenix schedules module:app (no master has recorded one here)")
        rows = schedules_report(load_app(str(spec)), journal, time.time())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for line in render_schedules(rows):
            click.echo(visible(line))


@main.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.option("--limit", type=HOW_MANY, default=50, show_default=True,
              help="Show at most this many, newest first.")
@store_option
@friendly_errors
def batches(state_dir: str | None, as_json: bool, limit: int, store: str | None) -> None:
    """List batches, newest first: open (taking jobs), closed (waiting for
    its jobs to end) or complete (on_batch_complete owed or run), with their
    jobs counted by state. A batch's jobs: `phoenix jobs --batch NAME`."""
    from phoenix.cli.batchview import batches_report, render_batches

    _paths, journal = _existing_journal(state_dir, store)
    with journal:
        report = batches_report(journal, limit)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render_batches(report)


@main.group("batch")
def batch_group() -> None:
    """Batches of jobs (see `phoenix batches`)."""


@batch_group.command("close")
@click.argument("name")
@state_dir_option
@store_option
@friendly_errors
def batch_close(name: str, state_dir: str | None, store: str | None) -> None:
    """Close batch NAME: it takes no more jobs, and is complete (the app's
    on_batch_complete is called) once each of its jobs has ended. Closing it
    again changes nothing."""
    from phoenix.app import Batch

    paths, journal = _existing_journal(state_dir, store, writes=True)
    setting = _settings({"store": store, "state_dir": state_dir}).store
    journal.close()
    state = Batch(name, setting, paths).close()
    click.echo(json.dumps({"batch": name, "state": state}))


@main.command()
@click.argument("key")
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@store_option
@friendly_errors
def show(key: str, state_dir: str | None, as_json: bool, store: str | None) -> None:
    """Show one job and every attempt: pid, node, start, duration, outcome,
    reason, max RSS, the error's traceback, and the result."""
    from phoenix.cli.jobsview import render_show, show_report

    _paths, journal = _existing_journal(state_dir, store)
    with journal:
        job = journal.job_by_key(key)
        if job is None:
            fail(f"no job with key {key!r}: `phoenix jobs` lists them", 1)
        report = show_report(journal, job)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render_show(report)


FOLLOW_POLL = 0.2  # seconds between two looks at a followed attempt's file and journal row


@main.command()
@click.argument("key")
@click.option("--attempt", "number", type=ATTEMPT_NUMBER, help="This attempt's output (default: the latest).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the attempt writes until it ends.")
@state_dir_option
@store_option
@friendly_errors
def logs(key: str, number: int | None, follow: bool, state_dir: str | None, store: str | None) -> None:
    """Print what a job wrote to its stdout and stderr (its processes' too):
    the latest attempt's, or --attempt N's; the last job_output_max_bytes of
    each attempt are kept, for its last 3 attempts. To a terminal, control
    characters are shown escaped; to a pipe or a file, the bytes as written."""
    from phoenix.child import output

    paths, journal = _existing_journal(state_dir, store)
    printer = output.Printer(sys.stdout.buffer, sys.stdout.isatty())
    try:
        with journal:
            job = journal.job_by_key(key)
            if job is None:
                fail(f"no job with key {visible(key)!r}: `phoenix jobs` lists them", 1)
            attempts = journal.attempts_of(job["id"])
            while follow and not attempts and number is None:
                time.sleep(FOLLOW_POLL)  # not started yet: its first attempt is the one to follow
                attempts = journal.attempts_of(job["id"])
            if not attempts:
                fail(f"job {visible(key)!r} has not started an attempt yet: no output", 1)
            numbers = [a["n"] for a in attempts]
            chosen = numbers[-1] if number is None else number
            if chosen not in numbers:
                fail(f"job {visible(key)!r} has no attempt {chosen} (its attempts: {numbers[0]} to {numbers[-1]})",
                     1)
            reader = output.Reader(output.attempt_file(paths.output, job["id"], chosen))
            printer.write(reader.read())
            while follow and not _attempt_ended(journal, job["id"], chosen):
                time.sleep(FOLLOW_POLL)
                printer.write(reader.read())
            printer.write(reader.read())  # what came before the attempt's end was recorded
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `phoenix logs KEY | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if reader.position == 0 and chosen <= numbers[-1] - output.KEEP_ATTEMPTS:
        click.echo(f"phoenix: the output of attempt {chosen} is no longer kept (only the last "
                   f"{output.KEEP_ATTEMPTS} attempts' is)", err=True)
    elif reader.position == 0 and not os.path.exists(reader.path):
        click.echo(f"phoenix: attempt {chosen} of {visible(key)!r} left no output here (it wrote nothing, or "
                   "ran on another host: its output is in that host's state directory)", err=True)


def _attempt_ended(journal: Store, job_id: int, number: int) -> bool:
    return any(a["n"] == number and (a["ended_at"] is not None or a["outcome"] is not None)
               for a in journal.attempts_of(job_id))


@main.command()
@click.argument("keys", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True,
              help="Every failed job (of --target); cancelled ones only by key.")
@click.option("--target", help="With --failed: only jobs of this target.")
@click.option("--fresh", is_flag=True, help="Clear their checkpoints too: they start from the beginning.")
@state_dir_option
@store_option
@friendly_errors
def retry(keys: tuple[str, ...], all_failed: bool, target: str | None, fresh: bool, state_dir: str | None,
          store: str | None) -> None:
    """Put failed (or cancelled) jobs back to pending with a fresh retry
    budget; a running master starts them at once. Their earlier attempts stay
    in the journal, and the next one is numbered after them. --failed takes
    every failed job, never a cancelled one: a cancel is undone only by naming
    the job. A job resumes from its last checkpoint unless --fresh."""
    if bool(keys) == all_failed:
        fail("name the jobs to retry (phoenix retry KEY...), or give --failed for every failed job")
    if target and not all_failed:
        fail("--target goes with --failed; to retry named jobs, give their keys only")
    paths, journal = _existing_journal(state_dir, store, writes=True)
    retried = actions.retry(paths, journal, None if all_failed else list(keys), target, fresh=fresh)
    click.echo(json.dumps({"retried": retried}))


@main.command()
@click.argument("keys", nargs=-1, required=True)
@state_dir_option
@store_option
@friendly_errors
def cancel(keys: tuple[str, ...], state_dir: str | None, store: str | None) -> None:
    """Cancel jobs: a pending one becomes `cancelled`; a running one gets
    TERM, then KILL after kill_grace, to its process group, and its outcome is
    `cancelled` (no retry; on_failed is called with an error that starts
    "cancelled by the operator"). A running job needs its master running.
    With a shared store (--store URL) it works from any host: the master
    running the job, wherever it is, ends it within 3 s; if that master is
    gone, the master that recovers its lease records the job cancelled."""
    paths, journal = _existing_journal(state_dir, store, writes=True)
    try:
        results = actions.cancel(paths, journal, list(keys))
    except pidfile.NoPidfile as exc:
        fail(str(exc), 1)
    for result in results:
        if result.done:
            click.echo(result.message)
    refused = [result.message for result in results if not result.done]
    if refused:
        fail("; ".join(refused), 1)


@main.command()
@click.option("--finished-before", required=True, help="Delete finished jobs last changed this long ago: 7d, 12h.")
@click.option("--failed-before", help="Also delete failed and cancelled jobs last changed this long ago: 30d.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@state_dir_option
@store_option
@friendly_errors
def prune(finished_before: str, failed_before: str | None, as_json: bool, state_dir: str | None,
          store: str | None) -> None:
    """Delete old jobs with their attempts and callbacks (and master events
    older than --finished-before), 500 jobs per transaction so a running
    master is never held up long. Pending and running jobs, jobs whose
    callback has not run yet, the jobs of a batch until its on_batch_complete
    has run, and the newest job (job ids are never given twice) are never
    deleted."""
    finished_age = parse_duration(finished_before)
    failed_age = _seconds(failed_before)
    paths, journal = _existing_journal(state_dir, store, writes=True)
    now = time.time()
    with journal:
        removed = journal.prune(finished_before=now - finished_age,
                                failed_before=None if failed_age is None else now - failed_age)
        removed["output_files"] = _prune_output(paths, journal)
    if as_json:
        click.echo(json.dumps(removed))
    else:
        click.echo("deleted " + ", ".join(f"{n} {what}" for what, n in removed.items()))


def _prune_output(paths: StatePaths, journal: Store) -> int:
    """The output files of jobs no longer in the journal (this prune's, or an
    earlier one's); one look-up per job that has files."""
    from phoenix.child import output

    try:
        names = os.listdir(paths.output)
    except OSError:
        return 0
    by_job: dict[int, list[str]] = {}
    for name in names:
        job_id = output.job_of_file(name)
        if job_id is not None:
            by_job.setdefault(job_id, []).append(name)
    removed = 0
    for job_id, files in by_job.items():
        if journal.job_row(job_id) is None:
            for name in files:
                try:
                    os.unlink(paths.output / name)
                    removed += 1
                except OSError:
                    pass  # gone already
    return removed


@main.command("quarantine")
@click.argument("names", nargs=-1)
@click.option("--clear", is_flag=True, help="Delete the named records (all, with no NAME) once looked at.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@state_dir_option
@friendly_errors
def quarantine_command(names: tuple[str, ...], clear: bool, as_json: bool, state_dir: str | None) -> None:
    """Show the records a master could not process and put aside (in
    <state-dir>/quarantine/), or delete them with --clear. Such a record
    (an outbox file that is not a valid outcome, a final that does not
    parse, an outcome the store refused) is never run or acted on; its
    attempt ended as `error` (outcome quarantined) or as its process ended.
    With NAMEs, only those records."""
    from phoenix.store import quarantine

    paths = _state_paths(state_dir)
    if clear:
        deleted, missing = quarantine.clear(paths.root, list(names) or None)
        click.echo(json.dumps({"deleted": deleted}) if as_json else f"deleted {len(deleted)} record(s)")
        if missing:
            fail("no quarantined record named " + ", ".join(f"'{visible(name)}'" for name in missing), 1)
        return
    chosen = list(names) or quarantine.names(paths.root)
    records = {name: quarantine.read(paths.root, name) for name in chosen}
    if as_json:
        click.echo(json.dumps({"directory": str(quarantine.directory(paths.root)), "records": records}, indent=2))
        return
    if not records:
        click.echo(f"nothing quarantined in {visible(str(quarantine.directory(paths.root)))}")
        return
    for name, entry in records.items():
        record = str(entry.get("record", ""))
        shown = record if len(record) <= 300 else record[:300] + f"... ({entry.get('bytes', len(record))} bytes)"
        click.echo(f"{visible(name)}\n  {visible(str(entry.get('what')))}: {visible(str(entry.get('reason')))}"
                   f"\n  record: {visible(shown)}")
    click.echo(f"{len(records)} record(s); delete them once looked at: phoenix quarantine --clear [NAME ...]")


@main.group()
def store() -> None:
    """The shared (PostgreSQL) job store."""


@store.command()
@store_option
@friendly_errors
def migrate(store: str | None) -> None:
    """Create the shared store's schema, or upgrade it to this Phoenix's version."""
    url = _settings({"store": store}).store
    from phoenix.store.base import check_setting

    check_setting(url)
    if not is_url(url):
        fail("phoenix store migrate needs a postgresql:// URL (--store, PHOENIX_STORE, or store in phoenix.toml); "
             "the SQLite journal is created by `phoenix start`")
    from phoenix.store.postgres import migrate as migrate_schema

    before, now = migrate_schema(url)
    if before == now:
        click.echo(f"schema version {now}: up to date")
    else:
        click.echo(f"schema version {now}: {'created' if before is None else f'upgraded from {before}'}")


class _OneLineUsage(click.Command):
    """A command whose bad flags are one line (and exit 2), not click's usage block."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            fail(f"{exc.format_message()} (see phoenix {ctx.info_name} --help)")


@main.command(cls=_OneLineUsage)
@state_dir_option
@store_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but a loopback address lets other hosts read the jobs.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8450, show_default=True,
              help="Port to listen on (0: any free one, printed).")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="File holding the token that retry and cancel need (or PHOENIX_DASHBOARD_TOKEN); "
                   "without a token the dashboard is read-only.")
@friendly_errors
def dashboard(state_dir: str | None, store: str | None, host: str, port: int, token_file: str | None) -> None:
    """Serve a live dashboard of the jobs and masters (docs/dashboard.md):
    pages and a JSON API under /api/, read from the store by this process,
    never by the master. Retry and cancel need the token, sent as
    `Authorization: Bearer TOKEN`. Runs until TERM or Ctrl-C."""
    token = _dashboard_token(token_file)
    try:
        from phoenix.web.server import ActionRefused, ActionUnknown, Dashboard, DashboardError, serve
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ("starlette", "uvicorn", "jinja2", "markupsafe", "anyio", "h11"):
            raise
        fail(f"the dashboard needs the web extra ({exc.name} is not installed): "
             "pip install 'phoenix-procmaster[web]'")
    setting = _settings({"store": store, "state_dir": state_dir}).store
    paths, journal = _existing_journal(state_dir, store)  # refused now, with one line, if there is nothing to show
    journal.close()

    def retry_one(key: str) -> dict[str, Any]:
        try:
            retried = actions.retry(paths, _open_journal(setting, paths, writes=True), [key], None)
        except RetryRefused:
            with _open_journal(setting, paths, writes=False) as journal:
                if journal.job_by_key(key) is None:  # as cancel: an unknown key is 404, not a conflict
                    raise LookupError(f"no job with key '{visible(key)}'") from None
            raise
        return {"retried": retried, "message": f"retried {visible(key)}: pending again"}

    def cancel_one(key: str) -> dict[str, Any]:
        try:
            (result,) = actions.cancel(paths, _open_journal(setting, paths, writes=True), [key])
        except control.NoAnswer as exc:
            raise ActionUnknown(str(exc)) from None
        except (pidfile.NoPidfile, control.ControlError) as exc:
            raise ActionRefused(str(exc)) from None
        if result.before == "unknown":
            raise LookupError(result.message)
        if not result.done:
            raise ActionRefused(result.message)
        return {"key": key, "was": result.before, "message": result.message}

    board = Dashboard(paths=paths, store_url=setting if is_url(setting) else None,
                      open_store=lambda: _open_journal(setting, paths, writes=False),
                      retry=retry_one, cancel=cancel_one, token=token)

    def ready(url: str) -> None:
        mode = "retry and cancel need the token" if token else "read-only: no token configured"
        click.echo(f"phoenix dashboard: {url} ({mode}); Ctrl-C to stop")
        sys.stdout.flush()

    try:
        serve(board, host, port, ready)
    except DashboardError as exc:
        fail(str(exc), exc.exit_code)


DASHBOARD_TOKEN_VARIABLE = "PHOENIX_DASHBOARD_TOKEN"
MIN_TOKEN_CHARS = 16  # a guessable token is no lock


def _dashboard_token(token_file: str | None) -> bytes | None:
    """The token actions need: --token-file's first line (a file only this
    user can read), else PHOENIX_DASHBOARD_TOKEN; None (read-only) without."""
    if token_file is not None:
        where = f"--token-file {token_file}"
        try:  # O_NONBLOCK: a FIFO's open would wait for a writer forever; it is refused below
            fd = os.open(token_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            fail(f"{where}: {exc.strerror}")
        with os.fdopen(fd, "rb") as file:
            found = os.fstat(file.fileno())
            if not stat.S_ISREG(found.st_mode):
                fail(f"{where}: not a regular file (a FIFO, a device, ...); put the token in a file of its own")
            # As the state directory's trust checks: another user's file could be swapped for their token.
            if found.st_uid != os.geteuid():
                fail(f"{where}: the file belongs to uid {found.st_uid}, not to this user (uid {os.geteuid()}); "
                     "write the token into a file of your own, chmod 600")
            if found.st_mode & 0o077:
                fail(f"{where}: the file can be read by other users; chmod 600 it")
            text = file.read(4096).split(b"\n")[0].strip()
    else:
        where = DASHBOARD_TOKEN_VARIABLE
        text = os.environb.get(DASHBOARD_TOKEN_VARIABLE.encode(), b"").strip()
        if not text:
            return None
    if len(text) < MIN_TOKEN_CHARS or not all(0x21 <= byte <= 0x7E for byte in text):
        fail(f"{where}: the token must be at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces "
             f"(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return text
