"""Configuration: built-in defaults, then the App's own arguments, then
phoenix.toml (or [tool.phoenix] in pyproject.toml, or --config FILE), then
PHOENIX_* environment variables, then command-line flags; each overrides the
one before."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from phoenix.errors import UsageError
from phoenix.linux.untrusted import visible

# The largest pool capacity: every store keeps it in a 32-bit column (PostgreSQL
# `integer`), and a master that cannot register its pools cannot start.
POOL_CAPACITY_MAX = 2**31 - 1


class ConfigError(UsageError, ValueError):
    """A setting is missing, of the wrong type, or out of range."""


def check_pool_capacity(name: str, capacity: Any) -> None:
    """A pool's capacity is a whole number the stores can keep, or ConfigError
    (Config.validate, and `phoenix submit`, which does not validate the rest)."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 0 <= capacity <= POOL_CAPACITY_MAX:
        raise ConfigError(f"pool {name!r} needs a capacity that is a whole number from 0 to "
                          f"{POOL_CAPACITY_MAX} (got {capacity!r}): pools = {{\"{name}\": 10}}")


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# ASCII digits only: \d would also take "１５０M" or "٣٣M", which nobody reading the setting sees as a size.
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)
# A child is a forked Python process: it holds the app's imports before the
# job allocates anything (about 15 MB for a small app). A limit below this
# would kill every attempt at its first look, for no fault of the job.
MIN_MAX_MEMORY = 32 * 1024**2


MAX_MAX_MEMORY = 1 << 62  # 4 EiB: beyond it, a limit limits nothing (and the kernel's counters end at 2**63)


def parse_max_memory(value: object, where: str) -> int | None:
    """Bytes, from "512M", "1.5G", "200MB", "1GiB" or a number of bytes; None:
    no limit. ValueError (one line saying how to write it) for anything else."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        bytes_ = float(match[1]) * _UNITS[match[2].upper()]
        size = int(bytes_) if bytes_ <= MAX_MAX_MEMORY else MAX_MAX_MEMORY + 1  # (400 nines overflow a float)
    else:
        raise ValueError(f"{where} wants a size such as \"512M\", \"2G\" or a number of bytes, not {value!r:.40}")
    if size > MAX_MAX_MEMORY:
        raise ValueError(f"{where} is more than {MAX_MAX_MEMORY // 1024**6} EiB, more memory than any machine has: "
                         "leave it out for no limit")
    if size < MIN_MAX_MEMORY:
        raise ValueError(f"{where} is {size} bytes, below the {MIN_MAX_MEMORY // 1024**2}M a Python child needs to "
                         "start (every attempt would be killed at once): raise it, or leave it out for no limit")
    return size


def doc(description: str) -> dict[str, str]:
    """A setting's description, kept as field metadata that nothing at run time
    reads: the settings reference is rendered from it when the documentation
    is built (docs/hooks/settings.py), so that page cannot drift from the code."""
    return {"doc": description}


@dataclass
class Config:
    app: str | None = field(default=None, metadata=doc(
        '"module:attribute" of a `phoenix.App`: what `phoenix start` runs when it is given no APP'))
    state_dir: str = field(default=".phoenix", metadata=doc(
        "pidfile, sockets, journal, outbox (mode 0700); refused unless it is this user's and not writable by "
        "group or others (see Failure modes)"))
    workers: int = field(default=4, metadata=doc("concurrent child slots"))
    heartbeat_interval: float = field(default=1.0, metadata=doc("seconds between a child's beats"))
    heartbeat_timeout: float = field(default=5.0, metadata=doc(
        "no beat for this many seconds: kill the child and re-run its job; longer than `heartbeat_interval` "
        "(three intervals or more is usual)"))
    kill_grace: float = field(default=5.0, metadata=doc(
        "TERM to the child's process group, KILL this many seconds after"))
    retries: int = field(default=3, metadata=doc(
        "re-runs after the first attempt (a job's `@app.job(retries=...)` wins)"))
    backoff_base: float = field(default=0.5, metadata=doc(
        "seconds before the first re-run; the delay doubles per attempt, with jitter"))
    backoff_cap: float = field(default=60.0, metadata=doc("the longest delay before a re-run, in seconds"))
    restart_intensity: int = field(default=100, metadata=doc(
        "master-wide re-run budget: at most this many re-runs in `restart_period`; beyond that re-runs wait"))
    restart_period: float = field(default=10.0, metadata=doc("the window of `restart_intensity`, in seconds"))
    callback_timeout: float = field(default=30.0, metadata=doc(
        "seconds an `on_finished` or `on_failed` callback may run before it counts as an error"))
    callback_threads: int = field(default=4, metadata=doc("threads that run callbacks (at least 1)"))
    outcome_delivery_timeout: float = field(default=10.0, metadata=doc(
        "seconds a child waits for its final message to be acknowledged before it writes the outbox"))
    reexec: str = field(default="inplace", metadata=doc(
        'what USR2 does: "inplace" (same pid) or "fork" (unicorn-style)'))
    reload_timeout: float = field(default=120.0, metadata=doc(
        "a preflight or fork-mode new master slower than this many seconds is killed and the reload fails"))
    exit_when_done: bool = field(default=False, metadata=doc(
        "batch mode: exit once every job has ended, 0 if all finished, 1 if any failed or was cancelled"))
    log_level: str = field(default="info", metadata=doc('"debug", "info", "warning" or "error"'))
    log_format: str = field(default="text", metadata=doc('"text", or "json" (one object per line) for log shippers'))
    log_file: str | None = field(default=None, metadata=doc(
        "a file for the master's log, reopened on USR1; unset: stderr"))
    metrics: str | None = field(default=None, metadata=doc(
        "`HOST:PORT` to serve Prometheus metrics on (a bare port binds 127.0.0.1); unset: off"))
    store: str = field(default="sqlite", metadata=doc(
        '"sqlite" (`STATE_DIR/journal.db`) or a `postgresql://` URL shared by many masters (see Many hosts)'))
    node: str | None = field(default=None, metadata=doc(
        "this master's name in a shared store; unset: the host name and the state directory"))
    lease_ttl: float = field(default=30.0, metadata=doc(
        "seconds a master's lease in a shared store lasts without renewal"))
    job_output_max_bytes: int = field(default=1024 * 1024, metadata=doc(
        "a job's stdout and stderr kept per attempt, the last part of it (at least 4096; see Writing jobs)"))
    pools: dict[str, int] = field(default_factory=dict, metadata=doc(
        "global resource pools, name -> capacity (0 to 2147483647): at most that many attempts of the jobs "
        "that name the pool (`@app.job(pool=...)`) run at once across every master sharing the store; "
        "a `[pools]` table, `PHOENIX_POOLS=db=10,api=3` (see Scheduling and limits)"))
    max_memory: str | None = field(default=None, metadata=doc(
        'the default limit of a job\'s resident memory, e.g. "512M" or "2G" (at least 32M); a job past it is '
        'killed, reason max_memory (`@app.job(max_memory=...)` wins; see Batches and long jobs); unset: none'))
    memory_cgroups: bool = field(default=True, metadata=doc(
        "enforce max_memory with a memory cgroup per job where the master may make them under its own (cgroup "
        "v2 delegated, or v1 as root); false: the watchdog, always (see Batches and long jobs)"))
    otel: bool = field(default=False, metadata=doc(
        "an OpenTelemetry span per attempt, on the tracer provider the app sets (needs the `otel` extra; "
        "see Tracing); off: nothing of OpenTelemetry is imported"))

    def validate(self) -> "Config":
        positive = ("heartbeat_interval", "heartbeat_timeout", "callback_timeout", "outcome_delivery_timeout",
                "restart_period", "reload_timeout", "lease_ttl")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be greater than 0 (got {getattr(self, name)!r})")
        for name in ("workers", "retries", "restart_intensity", "kill_grace", "backoff_base", "backoff_cap"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative (got {getattr(self, name)!r})")
        if self.job_output_max_bytes < 4096:
            raise ConfigError(f"job_output_max_bytes must be at least 4096 (got {self.job_output_max_bytes!r})")
        try:
            parse_max_memory(self.max_memory, "max_memory")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.callback_threads < 1:
            raise ConfigError("callback_threads must be at least 1")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError(
                f"heartbeat_timeout ({self.heartbeat_timeout}) must be longer than heartbeat_interval "
                f"({self.heartbeat_interval}); three intervals or more is usual"
            )
        if self.reexec not in ("inplace", "fork"):
            raise ConfigError(f'reexec must be "inplace" or "fork" (got {self.reexec!r})')
        if self.log_format not in ("text", "json"):
            raise ConfigError(f'log_format must be "text" or "json" (got {self.log_format!r})')
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error (got {self.log_level!r})")
        if self.store != "sqlite" and not self.store.startswith(("postgresql://", "postgres://")):
            raise ConfigError('store must be "sqlite" or a postgresql:// URL (got a value of another form)')
        for name, capacity in self.pools.items():
            if not name or visible(name) != name or len(name) > 200:
                raise ConfigError(f"pool name '{visible(name[:200])}' must be printable text (at most 200 characters)")
            check_pool_capacity(name, capacity)
        if self.node is not None and not self.node.strip():
            raise ConfigError("node must not be empty")
        if self.node is not None and visible(self.node) != self.node:
            raise ConfigError(f"node '{visible(self.node)}' holds a control character or bytes that are not UTF-8: "
                              "name it with printable text")
        if self.otel and importlib.util.find_spec("opentelemetry") is None:
            raise ConfigError("otel is on but OpenTelemetry is not installed: "
                              "pip install 'phoenix-procmaster[otel]', or set otel = false")
        return self

    def overlay(self, values: dict[str, Any], source: str, problems: list[str] | None = None) -> "Config":
        """A copy with `values` applied, each checked against the field's type.
        With `problems`, a setting that is unknown or of the wrong type is
        described there and left out, instead of raising ConfigError."""
        known = {f.name: f for f in dataclasses.fields(self)}
        updates: dict[str, Any] = {}
        for key, raw in values.items():
            name = key.replace("-", "_")
            try:
                if name not in known:
                    raise ConfigError(f"unknown setting {key!r} in {source}; known settings: "
                                      f"{', '.join(sorted(known))}")
                updates[name] = _coerce(name, getattr(self, name), raw, source)
            except ConfigError as exc:
                if problems is None:
                    raise
                problems.append(f"unknown setting {key!r} in {source}" if name not in known else str(exc))
        return dataclasses.replace(self, **updates)


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(name: str, current: Any, raw: Any, source: str) -> Any:
    kind: type[object] = type(current) if current is not None else str
    if kind is dict:
        return _pools(name, raw, source)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(raw, (bool, list, dict)):
            # int(True) is 1 and str(True) is "True": a TOML true (or a table)
            # where a number or a string belongs is a mistake, never a value.
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            number = float(raw)
            if not math.isfinite(number):  # nan passes every check of validate(); inf is no limit at all
                raise ValueError(raw)
            return number
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} in {source} must be {_KIND_NAMES.get(kind, kind.__name__)} (got {raw!r})") from None


def _pools(name: str, raw: Any, source: str) -> dict[str, int]:
    """`pools`: a table (TOML, App(pools={...})) or "db=10,api=3" (PHOENIX_POOLS, a flag)."""
    if isinstance(raw, str):
        try:
            pairs = [item.split("=", 1) for item in raw.split(",") if item.strip()]
            raw = {key.strip(): int(value) for key, value in pairs}
        except ValueError:
            raise ConfigError(f"{name} in {source} must look like db=10,api=3 (got {raw!r})") from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise ConfigError(f"{name} in {source} must be a table of pool names and capacities, e.g. {{\"db\": 10}} "
                          f"(got {raw!r})")
    return dict(raw)


def _file_settings(path: Path) -> dict[str, Any]:
    import tomllib  # here: most masters read no file, and every new image would pay ~2 ms for it

    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    settings: dict[str, Any]
    if path.name == "pyproject.toml":
        settings = data.get("tool", {}).get("phoenix", {})
    else:
        settings = data.get("phoenix", data)  # accept a [phoenix] table or top-level keys
        if "phoenix" in data and "pools" in data and "pools" not in settings:
            settings = {**settings, "pools": data["pools"]}  # a [pools] table beside [phoenix]
    return settings


def find_config_file(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    for candidate in (Path("phoenix.toml"), Path("pyproject.toml")):
        if candidate.is_file():
            if candidate.name == "pyproject.toml" and not _file_settings(candidate):
                continue
            return candidate
    return None


def env_settings(environ: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(Config)}
    settings: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith("PHOENIX_"):
            name = key[len("PHOENIX_"):].lower()
            if name in known:
                settings[name] = value
    return settings


def load(app_defaults: dict[str, Any] | None, config_file: str | None, flags: dict[str, Any],
         validate: bool = True, warn: Callable[[str], None] | None = None) -> Config:
    """The one builder of settings, used by every command: merge every source
    in order of precedence and validate the result. Commands that only address
    a master or read the state directory (status, stop, submit, jobs...) pass
    validate=False and a `warn`: they need the state directory alone, and a
    setting that a running master would refuse (a misspelt key, a value of
    the wrong type, a file that is not TOML) must never lock an operator out
    of it. Such settings are left out and described in one `warn` call;
    without `warn` they raise ConfigError. Command-line flags are always checked."""
    problems: list[str] | None = [] if warn is not None else None
    config = Config()
    if app_defaults:
        config = config.overlay(app_defaults, "the App(...) arguments", problems)
    try:
        path = find_config_file(config_file)
        if path is not None:
            config = config.overlay(_file_settings(path), str(path), problems)
    except ConfigError as exc:
        if problems is None:
            raise
        if flags.get("state_dir") is None:  # the file may name it: going on without it could address another directory
            raise ConfigError(f"{exc}; fix it, or give --state-dir") from None
        problems.append(f"{exc} (the whole file is ignored)")
    config = config.overlay(env_settings(), "the PHOENIX_* environment", problems)
    config = config.overlay({k: v for k, v in flags.items() if v is not None}, "the command line")
    if warn is not None and problems:
        warn(f"ignored, as this command needs only the state directory: {'; '.join(problems)} "
             "(`phoenix check` says what a master would refuse)")
    return config.validate() if validate else config
