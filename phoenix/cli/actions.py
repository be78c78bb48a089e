"""The operator's actions on jobs, shared by `phoenix retry`, `phoenix
cancel` and the dashboard's buttons: one way to do each, whoever asks."""

from __future__ import annotations

from dataclasses import dataclass

from phoenix.linux import pidfile
from phoenix.linux.paths import StatePaths
from phoenix.linux.untrusted import visible
from phoenix.store.base import WAITING, CancelRequest, SharedStore, Store
from phoenix.wire import control

HANDOVER_WAIT = 30.0  # seconds to wait for a master in a fork-mode hand-over to write its pidfile


def retry(paths: StatePaths, journal: Store, keys: list[str] | None, target: str | None,
          fresh: bool = False) -> list[str]:
    """Put failed (or cancelled) jobs back to pending, all or none (RetryRefused
    names the job that cannot be), and wake the master; returns their keys.
    `fresh`: their checkpoints are cleared too. Closes `journal`."""
    with journal:
        retried = journal.retry(keys, target, fresh=fresh)
    if not journal.shared:  # a shared store's masters are woken by its NOTIFY
        control.wake(paths.control_socket)
    return retried


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did to one job: `done` (cancelled, or being cancelled),
    its state before ("unknown": no such job), and what to tell the operator."""

    key: str
    before: str
    done: bool
    message: str


def running_master(paths: StatePaths) -> int | None:
    """The running master's pid, or None when none runs; a master between two
    images is waited for (pidfile.NoPidfile if its pidfile never comes back)."""
    return pidfile.running_master_pid(paths.pidfile, paths.lockfile, HANDOVER_WAIT)


def cancel(paths: StatePaths, journal: Store, keys: list[str]) -> list[Cancelled]:
    """Cancel jobs: a pending one at once; a running one by its master (TERM,
    then KILL after kill_grace), which must be running; on a shared store,
    wherever it runs. Closes `journal`."""
    master_runs = not journal.shared and running_master(paths) is not None
    running_on: dict[str, CancelRequest] = {}
    if isinstance(journal, SharedStore):
        # The claim skips a job row this holds (FOR UPDATE, SKIP LOCKED): a
        # pending job cannot start while it is being cancelled. A running
        # one's attempt is marked for its master, on whichever host.
        with journal:
            requests = {key: journal.cancel(key) or CancelRequest("unknown") for key in keys}
        states = {key: request.before for key, request in requests.items()}
        running_on = {key: request for key, request in requests.items() if request.node is not None}
    elif master_runs:
        journal.close()
        # The master is the journal's writer while it runs: it cancels, so that
        # a pending job cannot start just as it is cancelled here.
        try:
            answer = control.request(paths.control_socket, {"cmd": "cancel", "keys": keys})
        except control.NoAnswer as exc:  # delivered: a stopped master cancels once it runs again
            shows = ", ".join(f"`phoenix show {visible(key)}`" for key in keys)
            raise control.NoAnswer(exc.path, exc.timeout, message=f"the master did not answer within "
                                   f"{exc.timeout:g} s; the cancel may still happen: see {shows}") from None
        states = {str(key): str(before) for key, before in control.reply_field(answer, "cancelled", dict).items()}
    else:
        with journal:
            states = {key: journal.cancel_pending(key) or "unknown" for key in keys}
    return [_cancelled(paths, key, before, master_runs, journal.shared, running_on) for key, before in states.items()]


def _cancelled(paths: StatePaths, key: str, before: str, master_runs: bool, shared: bool,
               running_on: dict[str, CancelRequest]) -> Cancelled:
    shown = visible(key)
    if before in WAITING:
        return Cancelled(key, before, True, f"cancelled {shown} (it was {before})")
    if before == "running" and master_runs:
        return Cancelled(key, before, True,
                         f"cancelling {shown}: its process group gets TERM, then KILL after kill_grace")
    if before == "running" and key in running_on:
        node = visible(running_on[key].node or "")
        if running_on[key].live:
            message = (f"cancelling {shown} on node {node}: its master ends it (TERM to its process group, KILL "
                       "after kill_grace); if that master has died, the one that recovers it records it cancelled")
        else:
            message = (f"cancelling {shown}: node {node}'s master has no live lease; the master that recovers "
                       "it records the job cancelled")
        return Cancelled(key, before, True, message)
    if before == "running" and not shared:
        return Cancelled(key, before, False, f"job '{shown}' is running and no master runs on {paths.root} to stop "
                                             "it: start the master (it adopts the job), then cancel again")
    if before in ("running", "running elsewhere"):  # shared: it kept starting and ending, no attempt stayed marked
        return Cancelled(key, before, False, f"job '{shown}' is running, but the master has no process of it yet "
                                             "(it is adopting or recording it): cancel again in a moment")
    if before == "unknown":
        return Cancelled(key, before, False, f"no job with key '{shown}'")
    return Cancelled(key, before, False, f"job '{shown}' is {before}: only scheduled, pending or running jobs can "
                                         "be cancelled")
