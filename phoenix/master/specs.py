"""What the loaded app says of each job: its spec (resolved once per target),
its retries, and whether a job may start here. The one home of each: the
scheduler (both its local and its shared-store paths), the recorder and the
lease keeper ask here."""

from __future__ import annotations

from typing import Callable

from phoenix.app import App, AppError, JobSpec, decode_params, resolve_target
from phoenix.config import Config
from phoenix.linux.untrusted import json_problem, text_problem, visible
from phoenix.rules.policy import may_run
from phoenix.store.base import Job


class JobSpecs:
    def __init__(self, app: App | None, config: Callable[[], Config]) -> None:
        """`app`: None while no app is loaded (degraded: no job's policy is known)."""
        self.app = app
        self.config = config
        self._by_target: dict[str, JobSpec] = {}

    def spec_for(self, target: str) -> JobSpec:
        """The target's spec; AppError if the loaded code cannot run it."""
        spec = self._by_target.get(target)
        if spec is None:
            spec = self._by_target[target] = resolve_target(target)
        return spec

    def known_spec(self, target: str) -> JobSpec | None:
        """The target's spec, or None if no app is loaded or its code has no such job."""
        if self.app is None:
            return None
        try:
            return self.spec_for(target)
        except AppError:
            return None

    def retries(self, spec: JobSpec) -> int:
        """The job's retries: its own, or the app's default (which a reload may change)."""
        return spec.retries if spec.retries is not None else self.config().retries

    def retries_for(self, target: str) -> int | None:
        """The retries of a job that ended here; None while no app is loaded (its policy is not known)."""
        if self.app is None:
            return None
        spec = self.known_spec(target)
        if spec is None:
            return 0  # the loaded code has no such job: a re-run could not start
        return self.retries(spec)

    def startable(self, job: Job) -> JobSpec | str:
        """May this job start here? Its spec if so, else why it fails without
        an attempt: its target or parameters are bad (bad JSON fails the job
        here, not in a child), its checkpoint is damaged, or its failures,
        recorded by a master that had no app loaded, are past its policy's
        retries. (A record damaged by another tool fails its job with the
        reason: it never reaches a child, nor stops the master.)"""
        for what, value in (("key stored for it is", job.key), ("target stored for it is", job.target),
                            ("parameters stored for it are", job.params)):
            problem = text_problem(value)
            if problem is not None:
                return (f"job {shown_key(job.key)}: the {what} {problem} (damaged, or written by "
                        f"another tool); cancel it (phoenix cancel) and submit it again")
        if job.damaged is not None:  # a number of its row (SQLite's Journal.pending names it): before any arithmetic
            return (f"job {shown_key(job.key)}: the {job.damaged}, not a number (damaged, or written by another "
                    f"tool); cancel it (phoenix cancel) and submit it again")
        try:
            spec = self.spec_for(job.target)
            decode_params(job.params)
        except AppError as exc:
            return str(exc)
        problem = None if job.checkpoint is None else checkpoint_problem(job.checkpoint)
        if problem is not None:
            return (f"job {shown_key(job.key)}: the checkpoint stored for it is {problem} (damaged, or written by "
                    f"another tool); `phoenix retry {visible(job.key)} --fresh` runs it from the beginning")
        retries = self.retries(spec)
        if not may_run(job.failures, retries):
            return f"job {job.key!r} failed {job.failures} time(s); its policy allows {retries} retries"
        return spec


def shown_key(key: object) -> str:
    """A job's key for a message, whatever another tool stored for it."""
    return repr(visible(key)) if isinstance(key, str) else repr(key)


def checkpoint_problem(saved: object) -> str | None:
    """What makes a checkpoint read back from the journal unusable, or None.
    phoenix.checkpoint() saves only JSON text; anything else was put there
    by another tool, and would end the child (or the master) that reads it."""
    problem = text_problem(saved)
    if problem is None and isinstance(saved, str):
        problem = json_problem(saved)
    return problem
