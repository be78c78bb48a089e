"""The API of the Ruby prototype Phoenix grew from, kept so its scripts port
line for line:

    class Master(phoenix.HeartbeatParent): pass
    class Child(phoenix.HeartbeatChild):
        def long_process(self, params): ...
    m = Master(heartbeat_timeout=5)
    m.spawn_and_perform(Child, "long_process", 0)
    m.monitor()

It is a thin layer over App and Master: each spawn is a job with target
"module:Class.method", and monitor() runs a master until every job ended.
"""

from __future__ import annotations

import logging
from typing import Any

from phoenix.app import App, AppError, JobSpec


class HeartbeatChild:
    """Base class of a job object; one instance is made per attempt, in the child."""

    def __init__(self) -> None:
        self.heartbeat_logger = logging.getLogger("phoenix.job")

    @property
    def attempt(self) -> int:
        from phoenix.child.run import current_job

        job = current_job()
        return job.attempt if job else 0

    @classmethod
    def phoenix_method_job(cls, target: str, method: str) -> JobSpec:
        """The job that runs `method` of a new instance (app.resolve_target asks)."""
        if not callable(getattr(cls, method, None)):
            raise AppError(f"job target {target!r}: {cls.__name__} has no method {method!r}")

        def perform(params: Any) -> Any:
            return getattr(cls(), method)(params)

        return JobSpec(target, perform)


class HeartbeatParent:
    """A master run in the calling process. Settings are those of phoenix.App
    (heartbeat_timeout, workers, retries, ...); state_dir defaults to a fresh
    temporary directory so that a script never collides with a service."""

    def __init__(self, state_dir: str | None = None, **settings: Any) -> None:
        settings.setdefault("workers", 1000)  # the prototype ran every spawned child at once
        self.app = App(name=type(self).__name__, **settings)
        import tempfile  # here: only scripts use it, and every master image imports this module

        self._tempdir = None if state_dir else tempfile.TemporaryDirectory(prefix="phoenix-")
        self.state_dir = state_dir or self._tempdir.name  # type: ignore[union-attr]
        self._jobs: list[tuple[str, Any]] = []

    def spawn_and_perform(self, child_class: type[HeartbeatChild], method: str, params: Any = None) -> None:
        target = f"{child_class.__module__}:{child_class.__qualname__}.{method}"
        self._jobs.append((target, params))

    def monitor(self) -> int:
        """Run every spawned job to its end; returns 0 if all finished, 1 if any failed."""
        from phoenix.config import load
        from phoenix.master.arbiter import run_master

        def submit_all(app: App) -> None:
            for index, (target, params) in enumerate(self._jobs):
                app.submit(target, params, key=f"{target.rpartition('.')[2]}-{index}")

        self.app.startup(submit_all)
        try:
            flags = {"state_dir": self.state_dir, "exit_when_done": True}
            config = load(self.app.settings, None, flags)
            return run_master(self.app, None, config, lambda: load(self.app.settings, None, flags))
        finally:
            if self._tempdir is not None:
                self._tempdir.cleanup()
