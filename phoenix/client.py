"""`phoenix.Client`: submit jobs from application code (the web app that
enqueues work) without running a master and without importing the job code.

    from phoenix import Client

    jobs = Client(state_dir="/srv/feeds/.phoenix")
    job_id, created = jobs.submit("feeds.jobs:fetch", {"url": url}, key=f"fetch:{url}")

The job is recorded durably in the journal (the same idempotency rules as
`phoenix submit`), then the running master, if any, is woken to start it at
once; with no master running, the next one starts it. The target is checked
for its form ("module:name") only: the web app need not have the job's code
or its dependencies. `check=True` imports it as `phoenix submit` does, and
refuses a target that is not a job.

With a shared store, `Client(store="postgresql://...")` (or PHOENIX_STORE,
or store in phoenix.toml) records the job in PostgreSQL; every master
listening there is woken by a NOTIFY sent with the job's transaction.
"""

from __future__ import annotations

from typing import Any, Callable

from phoenix import config as config_module
from phoenix import control
from phoenix.app import check_target_form, encode_params, resolve_target
from phoenix.paths import StatePaths
from phoenix.store import check_setting, open_store
from phoenix.untrusted import check_key


class Client:
    """Where to submit: `state_dir`, else the configuration (`config_file`,
    then phoenix.toml or pyproject.toml in the current directory, then
    PHOENIX_STATE_DIR), else ./.phoenix. Settings passed to `App(...)` in the
    job code are not seen here (that code is not imported): name the state
    directory if the App sets it. Safe to share between threads: each
    submission opens the journal for itself."""

    def __init__(self, state_dir: str | None = None, config_file: str | None = None, *,
                 store: str | None = None, warn: Callable[[str], None] | None = None) -> None:
        # warn: settings other than state_dir and store that are wrong in the
        # file are described to it instead of raising ConfigError (config.load).
        settings = config_module.load(None, config_file, {"state_dir": state_dir, "store": store}, validate=False,
                                      warn=warn)
        check_setting(settings.store)
        self.store = settings.store
        self.paths = StatePaths(settings.state_dir)

    def submit(self, target: str, params: Any = None, key: str | None = None, *,
               check: bool = False) -> tuple[int, bool]:
        """Record a job; returns (job id, created). The same key with the same
        target and parameters is the same job (created False); with another
        target or other parameters, phoenix.KeyConflict says what differs."""
        check_target_form(target)
        if key:
            check_key(key)  # before the state directory is made or touched
        params_json = encode_params(params)
        if check:
            resolve_target(target)
        if self.store != "sqlite":
            with open_store(self.store, self.paths.journal) as shared:
                return shared.submit(target, params_json, key)  # the NOTIFY wakes the masters
        self.paths.ensure()
        with open_store(self.store, self.paths.journal) as journal:
            job_id, created = journal.submit(target, params_json, key)
        self.wake()
        return job_id, created

    def wake(self) -> None:
        """Ask the running master to look for pending jobs now."""
        control.wake(self.paths.control_socket)

