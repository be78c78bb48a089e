"""Does a release still run the work already queued? Part of the preflight
(`phoenix check`), which every replacement runs in the new code before exec.

A release that renames or removes a job function would leave the jobs
submitted under the old name with nothing to run: each would fail the moment
its turn came. So the preflight resolves, in the new code, every target that
pending or running jobs in the journal use (running ones too: a retry needs
the code) and refuses the release if one is missing, unless forced.
"""

from __future__ import annotations

from dataclasses import dataclass

from phoenix.app import AppError, resolve_target


@dataclass(frozen=True)
class MissingTarget:
    target: str
    pending: int
    running: int
    why: str  # the first line of the reason it cannot be resolved

    def __str__(self) -> str:
        jobs = ", ".join(f"{n} {state}" for n, state in ((self.pending, "pending"), (self.running, "running")) if n)
        return f"{self.target!r} ({jobs}: {self.why})"


def missing_targets(in_use: list[tuple[str, int, int]]) -> list[MissingTarget]:
    """The targets that jobs not yet ended use (the store's targets_in_use)
    and this code cannot resolve."""
    missing = []
    for target, pending, running in in_use:
        try:
            resolve_target(target)
        except AppError as exc:
            why = str(exc).partition("\n")[0].removeprefix(f"job target {target!r}: ")
            missing.append(MissingTarget(target, pending, running, why))
    return missing


def refusal(missing: list[MissingTarget]) -> str:
    return (f"this code lacks {_targets(missing)} that jobs in the journal use: "
            f"{'; '.join(map(str, missing))}. Those jobs would fail as soon as they start. "
            "Keep the old function until its jobs have ended (or submit them again under the new name), "
            "or replace anyway with `phoenix reload --force` (`phoenix check --force`)")


def forced_warning(missing: list[MissingTarget]) -> str:
    return (f"warning: --force: this code lacks {_targets(missing)} that jobs in the journal use; "
            f"they will fail when they start: {'; '.join(map(str, missing))}")


def _targets(missing: list[MissingTarget]) -> str:
    return "1 job target" if len(missing) == 1 else f"{len(missing)} job targets"
