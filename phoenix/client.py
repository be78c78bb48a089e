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

import time
from datetime import datetime
from typing import Any, Callable, Iterable

from phoenix import config as config_module
from phoenix.app import Batch, check_target_form, encode_params, resolve_target
from phoenix.linux.paths import StatePaths
from phoenix.linux.untrusted import check_key
from phoenix.rules.schedule import due_time, parse_priority
from phoenix.store.base import check_setting, default_key
from phoenix.store.open import open_store
from phoenix.wire import control


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
        # The first submission reads the whole journal (SQLite's quick_check), as
        # `phoenix start` does: a damaged journal is refused before anything is
        # written into it. Later ones, from the same Client, do not pay for it.
        self._journal_checked = False

    def submit(self, target: str, params: Any = None, key: str | None = None, *,
               check: bool = False, run_in: float | str | None = None, run_at: str | datetime | None = None,
               priority: int | str = 0) -> tuple[int, bool]:
        """Record a job; returns (job id, created). The same key with the same
        target and parameters is the same job (created False); with another
        target, other parameters, another due time or another priority,
        phoenix.KeyConflict says what differs. `run_in` (seconds) or `run_at`
        (ISO 8601 with an offset, or an aware datetime): `scheduled` until
        then. `priority`: higher starts first (default 0)."""
        check_target_form(target)
        if key:
            check_key(key)  # before the state directory is made or touched
        params_json = encode_params(params)
        due = due_time(time.time(), run_in, run_at)
        rank = parse_priority(priority)
        if check:
            resolve_target(target)
        if self.store != "sqlite":
            with open_store(self.store, self.paths.journal) as shared:
                # the NOTIFY wakes the masters
                return shared.submit(target, params_json, key, run_at=due, priority=rank)
        self.paths.ensure()
        with open_store(self.store, self.paths.journal, verify=not self._journal_checked) as journal:
            self._journal_checked = True
            job_id, created = journal.submit(target, params_json, key, run_at=due, priority=rank)
        self.wake()
        return job_id, created

    def submit_many(self, jobs: Iterable[tuple[str, Any, str | None]], *,
                    check: bool = False) -> list[tuple[int, bool]]:
        """Record many jobs, (target, params, key) each, in one transaction:
        all of them, or (on a bad target, key or parameters, or a key that
        names another job: the same errors as `submit`) none. Returns (job id,
        created) of each, in order; the master is woken once. One
        transaction holds the journal while it runs: pass a few thousand jobs
        a call, not millions."""
        batch = []
        for target, params, key in jobs:
            check_target_form(target)
            if key:
                check_key(key)
            params_json = encode_params(params)
            batch.append((target, params_json, key or default_key(target, params_json)))
        if check:
            for target in {target for target, _params, _key in batch}:
                resolve_target(target)
        if self.store != "sqlite":
            with open_store(self.store, self.paths.journal) as shared:
                return shared.submit_many(batch)  # one NOTIFY with the transaction wakes the masters
        self.paths.ensure()
        with open_store(self.store, self.paths.journal) as journal:
            submitted = journal.submit_many(batch)
        self.wake()
        return submitted

    def batch(self, name: str) -> Batch:
        """Jobs submitted as one batch: `with client.batch("feeds-2026-12-07")
        as b: b.submit(target, params, key=...)`. The block's end closes it;
        once each of its jobs has ended, the master calls the app's
        `on_batch_complete` (see docs/batches.md)."""
        return Batch(name, self.store, self.paths)

    def wake(self) -> None:
        """Ask the running master to look for pending jobs now."""
        control.wake(self.paths.control_socket)

