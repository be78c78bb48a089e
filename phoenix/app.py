"""The user's side: an App holds job functions, callbacks and startup hooks,
and a target string ("module:function" or "module:Class.method") names a job
in the journal so that any process, and any later master, can find it."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from phoenix.config import Config, ConfigError, check_pool_capacity, parse_max_memory
from phoenix.errors import UsageError
from phoenix.linux.untrusted import MAX_JSON_DEPTH, MAX_KEY_BYTES, json_too_deep, visible
from phoenix.rules.schedule import OVERLAP_SKIP, Schedule, ScheduleError, due_time, make_schedule, parse_priority

if TYPE_CHECKING:
    from phoenix.linux.paths import StatePaths
    from phoenix.store.base import Store


class AppError(UsageError, ValueError):
    """An app path, a target or parameters that cannot be used; the message
    says what is wrong and how to fix it. `detail`: the traceback behind it,
    if any, shown only when asked for (`--log-level debug`)."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class JobSpec:
    """How to run one kind of job, and its policy (None: the master's default)."""

    target: str
    func: Callable[[Any], Any]
    retries: int | None = None
    stall_timeout: float | None = None
    max_runtime: float | None = None
    heartbeat_timeout: float | None = None
    app: "App | None" = dataclasses.field(default=None, compare=False, repr=False)  # the App that registered it
    pool: str | None = None  # the global resource pool its attempts take a slot of (App(pools=...))
    max_memory: int | None = None  # bytes of resident memory; None: the max_memory setting's


@dataclass(frozen=True)
class JobInfo:
    """What a callback receives: enough to find the job and de-duplicate calls.
    `on_failed(job, error)` gets the traceback (or the reason with its detail)
    as `error`, whose last line says what happened; the rest of what is known
    of the attempt's end is here.

    Attributes:
        id: the job's id in the store.
        key: the job's idempotency key.
        target: what it runs, `module:function`.
        params: its parameters, as submitted (decoded JSON).
        attempt: the number of the attempt that ended (1, 2, ...); 0 when the
            job failed before any attempt (its target could not be loaded).
        outcome: how that attempt ended: finished, error, killed, crashed,
            signalled, exited, lost, interrupted or cancelled.
        error: the traceback, or the reason with its detail; None when finished.
        reason: a short reason: `SIGSEGV`, `exit code 3`, `heartbeat_timeout`,
            `max_runtime`, ...
        max_rss_kb: the attempt's peak memory in KiB, when its exit status was
            the master's to read.
    """

    id: int
    key: str
    target: str
    params: Any
    attempt: int  # 0: the job failed before any attempt (its target could not be loaded)
    outcome: str | None  # finished | error | killed | crashed | signalled | exited | lost (see outcomes.py)
    error: str | None
    reason: str | None = None  # short: SIGSEGV, exit code 3, heartbeat_timeout, max_runtime ...
    max_rss_kb: int | None = None  # the attempt's peak memory, when its exit status was ours to read


def check_pools(app: App, pools: dict[str, int]) -> None:
    """Every pool has a capacity a master can register, and every pool the
    app's jobs name has one (App(pools=...), [pools] in phoenix.toml or
    PHOENIX_POOLS), or an error naming the fix."""
    for name, capacity in pools.items():
        check_pool_capacity(name, capacity)
    for spec in app.jobs.values():
        if spec.pool is not None and spec.pool not in pools:
            known = ", ".join(sorted(pools)) or "none"
            raise AppError(f"job {spec.target} takes a slot of pool {spec.pool!r}, which has no capacity (pools "
                           f"known: {known}): add it, e.g. App(pools={{{spec.pool!r}: 10}}) or [pools] in "
                           "phoenix.toml")


@dataclass(frozen=True)
class BatchInfo:
    """What `on_batch_complete` receives: the batch that is complete.

    Attributes:
        id: the batch's id in the store.
        name: its name.
        counts: its jobs by final state, e.g. `{"failed": 2, "finished": 10}`.
        completion: which completion this is: 1, then 2 and on if a member
            was retried after the batch completed (`phoenix retry`) and the
            batch completed again; use (name, completion) to de-duplicate.
    """

    id: int
    name: str
    counts: dict[str, int]
    completion: int
    _read_jobs: Callable[[], list[dict[str, Any]]] = dataclasses.field(repr=False, compare=False)

    def jobs(self) -> list[dict[str, Any]]:
        """Its jobs in id order, each a dict: id, key, target, state, attempts,
        outcome, reason (of the last attempt), created_at, updated_at. (The
        errors' tracebacks are left out: `phoenix show KEY` has them.)"""
        return self._read_jobs()


def target_name(func: Callable[..., Any]) -> str:
    return f"{func.__module__}:{func.__qualname__}"


class App:
    """One program's jobs, callbacks, startup hooks and settings, run by
    `phoenix start module:attribute`.

    `App(workers=4, heartbeat_timeout=3.0, ...)` takes any setting of the
    settings reference by name: these override the built-in defaults and are
    overridden by phoenix.toml, the PHOENIX_* environment and the command
    line. An unknown name raises `phoenix.config.ConfigError`.
    """

    def __init__(self, name: str | None = None, **settings: Any) -> None:
        known = {f.name for f in dataclasses.fields(Config)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"App() got unknown settings {unknown}; known settings: {', '.join(sorted(known))}")
        self.name = name
        self.settings = settings
        self.jobs: dict[str, JobSpec] = {}
        self.finished_callbacks: list[Callable[[JobInfo, Any], Any]] = []
        self.failed_callbacks: list[Callable[[JobInfo, str | None], Any]] = []
        self.startup_hooks: list[Callable[["App"], Any]] = []
        self.schedules: dict[str, Schedule] = {}  # target -> its @app.periodic (master/ticker.py fires them)
        self.batch_callbacks: list[Callable[[BatchInfo], Any]] = []
        # Set by the master while it runs this app, so that app.submit() from a
        # startup hook writes to the master's own journal.
        self.journal: Store | None = None
        self._journal_checked = False  # outside a master, the first submit checks the whole journal (as Client)

    def job(
        self,
        func: Callable[[Any], Any] | None = None,
        *,
        retries: int | None = None,
        stall_timeout: float | None = None,
        max_runtime: float | None = None,
        heartbeat_timeout: float | None = None,
        pool: str | None = None,
        max_memory: str | int | None = None,
    ) -> Any:
        """Register a job function: `@app.job` or `@app.job(retries=3, ...)`.
        `pool`: at most the pool's capacity of this job's attempts (and of the
        other jobs of the pool) run at once, across every master sharing the
        store (docs/scheduling.md). `max_memory` ("512M", "2G"): killed (reason
        max_memory) past it."""
        if pool is not None and (not isinstance(pool, str) or not pool):
            raise AppError(f"@app.job(pool={pool!r}): give the name of a pool of App(pools={{...}})")
        limit = parse_max_memory(max_memory, "@app.job(max_memory=...)")  # ValueError, one line, at import

        def register(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
            spec = JobSpec(target_name(f), f, retries, stall_timeout, max_runtime, heartbeat_timeout, self,
                           pool=pool, max_memory=limit)
            self.jobs[spec.target] = spec
            f.__phoenix_job__ = spec  # type: ignore[attr-defined]
            return f

        return register(func) if func is not None else register

    def periodic(self, *, every: float | None = None, cron: str | None = None, tz: str | None = None,
                 params: Any = None, catch_up: int = 1, overlap: str = OVERLAP_SKIP) -> Any:
        """Run the job on a schedule: `every` seconds (ticks on the multiples
        of it since the epoch, UTC) or at the `cron` expression's wall times in
        `tz` (an IANA zone; UTC if not given). Stacked above `@app.job(...)`,
        or alone (the job is registered with the defaults). Each tick is one
        job keyed `<target>@<tick ISO 8601 UTC>` with `params`; see
        docs/scheduling.md for `catch_up` and `overlap`. Bad input raises
        ScheduleError at import, naming the fix."""
        encode_params(params)  # JSON, or refused now rather than at the first tick

        def register(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
            if not isinstance(getattr(f, "__phoenix_job__", None), JobSpec):
                f = self.job(f)
            spec: JobSpec = f.__phoenix_job__  # type: ignore[attr-defined]
            if spec.target in self.schedules:
                raise ScheduleError(f"@app.periodic for {spec.target}: it has a schedule already; give each job one "
                                    "(another schedule: another job function)")
            self.schedules[spec.target] = make_schedule(spec.target, every=every, cron=cron, tz=tz, params=params,
                                                        catch_up=catch_up, overlap=overlap)
            return f

        return register

    def on_finished(self, func: Callable[[JobInfo, Any], Any]) -> Callable[[JobInfo, Any], Any]:
        """Register `func(job, result)`, called by the master once a job has
        finished, with its `JobInfo` and the value the job returned. It runs
        in the master's callback threads, within `callback_timeout`; a
        callback owed when a master stops is run by the next one, so make it
        idempotent by `job.id` or `job.key`."""
        self.finished_callbacks.append(func)
        return func

    def on_failed(self, func: Callable[[JobInfo, str | None], Any]) -> Callable[[JobInfo, str | None], Any]:
        """Register `func(job, error)`, called once a job has failed for good
        (its retries used up) or was cancelled, with its `JobInfo` and the
        error text, whose last line says what happened. Run as `on_finished`
        callbacks are."""
        self.failed_callbacks.append(func)
        return func

    def on_batch_complete(self, func: Callable[[BatchInfo], Any]) -> Callable[[BatchInfo], Any]:
        """Register `func(batch)`, called once a batch is complete (closed, and
        each of its jobs finished, failed or cancelled) with its `BatchInfo`.
        Run as `on_finished` callbacks are: exactly once across replacements
        and stops, at least once across a master crash."""
        self.batch_callbacks.append(func)
        return func

    def batch(self, name: str, state_dir: str | None = None) -> "Batch":
        """A batch to submit jobs into: `with app.batch("feeds-2026-12-07") as b:
        b.submit(fetch, {"url": url}, key=url)`; the block's end closes it."""
        from phoenix.config import load
        from phoenix.linux.paths import StatePaths

        settings = load(self.settings, None, {"state_dir": state_dir}, validate=False)
        # In a master (a startup hook), its own journal: a second one opened in
        # its process would drop the master's locks on the file.
        journal = self.journal if state_dir is None else None
        return Batch(name, settings.store, StatePaths(settings.state_dir), journal=journal)

    def startup(self, func: Callable[["App"], Any]) -> Callable[["App"], Any]:
        """Run `func(app)` each time a master starts with this app (submissions
        are idempotent by key, so re-running it after a restart adds nothing)."""
        self.startup_hooks.append(func)
        return func

    def submit(self, target: Callable[..., Any] | str, params: Any = None, key: str | None = None,
               state_dir: str | None = None, *, run_in: float | str | None = None, run_at: Any = None,
               priority: int | str = 0) -> int:
        """Record a job durably; returns its id. The same key with the same
        target and parameters is one job (its id is returned); with another
        target, other parameters, another due time or priority,
        phoenix.KeyConflict says what differs. `run_in` seconds or `run_at`
        (ISO 8601 with an offset, or an aware datetime): `scheduled` until
        then. `priority`: higher starts first (default 0)."""
        from phoenix.store.open import open_store  # the store is opened lazily outside a master

        name = target if isinstance(target, str) else target_name(target)
        resolve_target(name)
        params_json = encode_params(params)
        due, rank = due_time(time.time(), run_in, run_at), parse_priority(priority)
        if self.journal is not None and state_dir is None:
            return self.journal.submit(name, params_json, key, run_at=due, priority=rank)[0]
        from phoenix.config import load
        from phoenix.linux.paths import StatePaths

        settings = load(self.settings, None, {"state_dir": state_dir}, validate=False)
        paths = StatePaths(settings.state_dir)
        if settings.store == "sqlite":
            paths.ensure()
        with open_store(settings.store, paths.journal, verify=not self._journal_checked) as journal:
            self._journal_checked = True
            return journal.submit(name, params_json, key, run_at=due, priority=rank)[0]


class Batch:
    """Jobs submitted as one batch (`Client.batch`, `App.batch`). Entering
    opens it (refused if a batch of that name was closed: names are used
    once); `submit` records each job in it at once, durably; leaving the
    `with` block closes it, so that it completes when its last job ends.
    Leaving it by an exception does not close it: the batch stays open, and
    running the same code again (the same keys: no duplicates) goes on
    filling it. Not for sharing between threads."""

    def __init__(self, name: str, store: str, paths: "StatePaths", journal: "Store | None" = None) -> None:
        from phoenix.store.batches import check_name

        check_name(name)
        self.name, self.store, self.paths, self.journal = name, store, paths, journal
        self.state: str | None = None  # after the close: closed, or complete

    def __enter__(self) -> "Batch":
        self._write(lambda journal: journal.submit_to_batch(self.name, []))  # opened, or refused now
        return self

    def submit(self, target: Callable[..., Any] | str, params: Any = None, key: str | None = None, *,
               run_in: float | str | None = None, run_at: str | datetime | None = None,
               priority: int | str = 0) -> tuple[int, bool]:
        """Record a job in the batch: (job id, created), as `Client.submit`,
        with its due time and priority (a delayed member keeps the batch
        from completing until it has run and ended)."""
        due, rank = due_time(time.time(), run_in, run_at), parse_priority(priority)
        return self._submit([(target, params, key, due, rank)])[0]

    def submit_many(self, jobs: Any) -> list[tuple[int, bool]]:
        """Record many (target, params, key) jobs in the batch in one transaction."""
        return self._submit([(target, params, key, None, 0) for target, params, key in jobs])

    def _submit(self, jobs: list[tuple[Any, Any, str | None, float | None, int]]) -> list[tuple[int, bool]]:
        from phoenix.linux.untrusted import check_key
        from phoenix.store.base import default_key

        batch = []
        for target, params, key, due, rank in jobs:
            name = target if isinstance(target, str) else target_name(target)
            check_target_form(name)
            if key:
                check_key(key)
            params_json = encode_params(params)
            batch.append((name, params_json, key or default_key(name, params_json), due, rank))
        submitted: list[tuple[int, bool]] = self._write(lambda journal: journal.submit_to_batch(self.name, batch))
        return submitted

    def close(self) -> str:
        """Close it; returns its state: closed, or complete if every job has ended."""
        self.state = self._write(lambda journal: journal.close_batch(self.name), owed=True)
        return self.state

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        if exc_type is None:
            self.close()

    def _write(self, write: Callable[["Store"], Any], owed: bool = False) -> Any:
        from phoenix.store.open import open_store
        from phoenix.wire import control

        if self.journal is not None:  # the master's own: it finds the jobs and callbacks on its next look
            return write(self.journal)
        if self.store == "sqlite":
            self.paths.ensure()
        with open_store(self.store, self.paths.journal) as journal:
            done = write(journal)
        if self.store == "sqlite":  # (a shared store's NOTIFY went with the transaction)
            control.wake(self.paths.control_socket, owed_callbacks=owed)
        return done


_TOO_DEEP = (f"job parameters nest more than {MAX_JSON_DEPTH} levels of arrays and objects, deeper than Phoenix "
             f"keeps: flatten them")


def encode_params(params: Any) -> str:
    try:
        text = json.dumps(params, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise AppError(_TOO_DEEP) from None
    except (TypeError, ValueError) as exc:
        raise AppError(
            f"job parameters must be JSON (objects, lists, strings, numbers, booleans, null): {exc}"
        ) from None
    if json_too_deep(text):
        raise AppError(_TOO_DEEP)
    return text


def decode_params(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise AppError(_TOO_DEEP) from None
    except json.JSONDecodeError as exc:
        shown = visible(text if len(text) <= 200 else f"{text[:200]}...")  # one line, whatever was given
        raise AppError(
            f"parameters are not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): '{shown}'. "
            "Quote them for the shell, e.g. '{\"url\": \"https://example.org\"}'"
        ) from None


def _refuse_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity: Python's json reads them, JSON has no such values."""
    raise AppError(f"job parameters must be JSON, which has no {name}: give a number, a string or null")


def _import_module(module_name: str, what: str) -> Any:
    if module_name == "__main__" or module_name in sys.modules:
        return sys.modules[module_name]
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # any error raised by the user's module: named in one line, traceback on demand
        detail = "".join(traceback.format_exception(exc)).rstrip()
        raise AppError(_import_failure(module_name, what, exc), detail) from None
    except SystemExit as exc:  # a module that exits at import must not end the master (or pass the preflight)
        raise AppError(f"cannot import {what}: module {module_name!r} called sys.exit({exc.code!r}) "
                       "while being imported") from None


def _import_failure(module_name: str, what: str, exc: Exception) -> str:
    """One line: what could not be imported, and the hint that fits."""
    if isinstance(exc, ModuleNotFoundError) and exc.name is not None:
        if module_name == exc.name or module_name.startswith(exc.name + "."):
            missing = "" if exc.name == module_name else f" (no package {exc.name!r})"
            return (f"cannot import {what}: there is no module {module_name!r}{missing}. Is the directory that "
                    f"holds it the current directory ({os.getcwd()}) or on PYTHONPATH?")
        return (f"cannot import {what}: module {module_name!r} imports {exc.name!r}, which is not installed in "
                f"this Python ({sys.executable}): install it there, or fix the import")
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else module_name
        return f"cannot import {what}: SyntaxError in {where}: {exc.msg}"
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    # The user's line that called into Phoenix (an @app.periodic refused), not Phoenix's own.
    theirs = [f for f in frames if not f.filename.startswith(os.path.dirname(__file__) + os.sep)]
    frame = (theirs or frames)[-1] if frames else None
    where = f" ({frame.filename}, line {frame.lineno})" if frame else ""
    return (f"cannot import {what}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {exc}{where}")


def check_target_form(spec: str, what: str = "job target") -> tuple[str, str]:
    """(module, attribute path) of 'package.module:name', checked without importing anything."""
    if visible(spec) != spec or len(spec) > MAX_KEY_BYTES:
        # No module or function name holds a control character, a byte that is not UTF-8 or a kilobyte.
        raise AppError(f"{what} '{visible(spec[:200])}' is not a Python name: it must look like 'package.module:name'")
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise AppError(f"{what} {spec!r} must look like 'package.module:name'")
    if module_name.endswith(".py") or "/" in module_name:
        # A file path, as `python svc.py` would take: Phoenix imports modules by name.
        dotted = module_name.removesuffix(".py").strip("/").replace("/", ".")
        raise AppError(f"{what} {spec!r} names a file; name its module instead: did you mean "
                       f"'{dotted}:{attr_path}'? (run phoenix from the directory that holds {dotted.split('.')[0]})")
    return module_name, attr_path


def _lookup(spec: str, what: str) -> Any:
    module_name, attr_path = check_target_form(spec, what)
    obj = _import_module(module_name, f"{what} {spec!r}")
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr_path!r}") from None
    return obj


def _make_cwd_importable() -> None:
    # `phoenix start examples.feeds:app` must find ./examples, as `python -m` would.
    if "" not in sys.path:
        sys.path.insert(0, "")


def load_app(spec: str) -> App:
    """Import 'module:attribute' and check that it is an App."""
    _make_cwd_importable()
    obj = _lookup(spec, "app")
    if not isinstance(obj, App):
        raise AppError(f"app {spec!r} is a {type(obj).__name__}, not a phoenix.App; "
                       "point at the object made by phoenix.App(...)")
    return obj


def resolve_target(target: str) -> JobSpec:
    """The JobSpec for a target, or AppError naming what is wrong."""
    _make_cwd_importable()
    obj = _lookup(target, "job target")
    spec = getattr(obj, "__phoenix_job__", None)
    if isinstance(spec, JobSpec):
        return spec
    class_path, _, method = target.partition(":")[2].rpartition(".")
    if class_path:
        owner = _lookup(f"{target.partition(':')[0]}:{class_path}", "job target")
        # A class that knows how to run its own methods as jobs (compat.HeartbeatChild):
        # asked through this hook, so that app.py does not import the layer above it.
        method_job = getattr(owner, "phoenix_method_job", None) if isinstance(owner, type) else None
        if method_job is not None:
            spec = method_job(target, method)
            assert isinstance(spec, JobSpec)
            return spec
    raise AppError(
        f"job target {target!r} is not a Phoenix job: decorate the function with @app.job, "
        "or name a method of a phoenix.HeartbeatChild subclass ('module:Class.method')"
    )
