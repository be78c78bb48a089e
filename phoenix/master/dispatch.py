"""Commands, however they arrive: a signal (rules/commands.SIGNAL_COMMANDS,
read by the master's loop) or a request on the control socket
(rules/commands.from_request). Each is one branch of `execute`; what it
changes belongs to the part that owns it (a stop to stopping.py, a reload to
handoff.py, a cancel to the journal and the hang killer), and what only the
master decides (its slots, its settings) it asks of the master."""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from phoenix import log
from phoenix.linux import pid1
from phoenix.linux.clock import Clock
from phoenix.master.attempts import AttemptTable
from phoenix.master.hangs import HangKiller
from phoenix.rules.commands import BadRequest, Command, from_request, interrupt_after
from phoenix.rules.states import MasterState, StopMode
from phoenix.store.base import WAITING, Store

INFO, ERROR = logging.INFO, logging.ERROR
event = log.event


class Commanded(Protocol):
    """What only the master decides (arbiter.Master)."""

    slots: int
    state: MasterState

    def set_slots(self, wanted: int) -> None: ...  # the one writer of slots
    def reload_configuration(self) -> None: ...  # the one writer of the settings
    def callbacks_held(self) -> bool: ...  # owed callbacks stay owed (a replacement, no app loaded)


class Stops(Protocol):
    """The way out (stopping.Stopping)."""

    def begin_stop(self, mode: StopMode, signum: int | None = None,
                   interrupt_after: float | None = None) -> float | None: ...


class Reloads(Protocol):
    """A replacement with new code (handoff.Handoff)."""

    def request_reload(self, force: bool = False) -> dict[str, Any]: ...


class Dispatcher:
    def __init__(self, master: Commanded, journal: Callable[[], Store], live: Callable[[bool], dict[str, Any]],
                 jobs_may_be_pending: Callable[[], None], wake_ticker: Callable[[], None], stopping: Stops,
                 handoff: Reloads, discard_spare: Callable[[], None], attempts: AttemptTable, hangs: HangKiller,
                 run_owed_callbacks: Callable[[], None], clock: Clock) -> None:
        """`journal`: the store open now (storage.Storage). `live()`: what
        `phoenix status` shows (status.Status). `wake_ticker()`: read the
        earliest due time again (ticker.Ticker). `discard_spare()`: end the
        spare child (spawner.Spawner), which holds the old log file."""
        self.master = master
        self.journal = journal
        self.live = live
        self.jobs_may_be_pending = jobs_may_be_pending
        self.wake_ticker = wake_ticker
        self.stopping = stopping
        self.handoff = handoff
        self.discard_spare = discard_spare
        self.attempts = attempts
        self.hangs = hangs
        self.run_owed_callbacks = run_owed_callbacks
        self.clock = clock

    def execute(self, command: Command, signum: int | None = None, force: bool = False,
                keys: list[str] | None = None, with_running: bool = True,
                interrupt_after: float | None = None) -> dict[str, Any]:
        """Run one command, however it arrived (a signal or the control socket).
        `interrupt_after`: a drain's deadline in seconds (stopping.Stopping holds it)."""
        if command == Command.STATUS:
            return {"ok": True, **self.live(with_running)}
        if command == Command.CANCEL:
            return {"ok": True, "cancelled": {key: self.cancel(key) for key in keys or []}}
        if command == Command.WAKE:
            self.jobs_may_be_pending()
            self.wake_ticker()  # a delayed job may be due before the earliest known
        elif command == Command.LEAVE and pid1.is_namespace_init():
            event(ERROR, "stop_refused", mode="leave-running", reason=pid1.LEAVE_RUNNING_REFUSED)
            return {"ok": False, "error": pid1.LEAVE_RUNNING_REFUSED}
        elif command in (Command.STOP, Command.DRAIN, Command.LEAVE):
            # Said, so that `phoenix stop` does not take a stop under way for a drain it asked (or an older release).
            already_stopping = self.master.state == MasterState.STOPPING
            left = self.stopping.begin_stop({Command.STOP: StopMode.TERM, Command.DRAIN: StopMode.DRAIN,
                                             Command.LEAVE: StopMode.LEAVE}[command], signum, interrupt_after)
            reply: dict[str, Any] = {"ok": True}
            if already_stopping:
                reply["already_stopping"] = True
            if left is not None:  # the seconds until the drain's deadline, which this master holds
                reply["interrupt_after"] = left
            return reply
        elif command == Command.RELOAD:
            return self.handoff.request_reload(force=force)
        elif command == Command.RELOAD_CONFIG:
            self.master.reload_configuration()
        elif command == Command.SLOT_MORE:
            self.master.set_slots(self.master.slots + 1)
            self.jobs_may_be_pending()
            event(INFO, "workers", workers=self.master.slots)
        elif command == Command.SLOT_LESS:
            self.master.set_slots(self.master.slots - 1)
            event(INFO, "workers", workers=self.master.slots)
        elif command == Command.REOPEN_LOGS:
            self.discard_spare()  # it holds the old log file; the next one gets the new
            log.reopen()
            event(INFO, "logs_reopened")
        return {"ok": True}

    def control_request(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            command = from_request(request)
        except BadRequest as exc:
            return {"ok": False, "error": str(exc)}
        if request.get("owed") is True and not self.master.callbacks_held():
            self.run_owed_callbacks()  # a batch closed complete owes its on_batch_complete
        # Only `phoenix reload --force` passes the preflight's check of queued targets.
        # `"running": false` (reload --wait's poll): the master alone, not a line per child (MBs at thousands).
        return self.execute(command, force=request.get("force") is True, keys=request.get("keys"),
                            with_running=request.get("running") is not False,
                            interrupt_after=interrupt_after(request))

    def cancel(self, key: str) -> str:
        """`phoenix cancel`: a pending job is cancelled in the journal; a
        running one's process group gets TERM, then KILL after kill_grace, and
        its outcome is `cancelled`. Returns the job's state before."""
        state = self.journal().cancel_pending(key)
        if state in WAITING and not self.master.callbacks_held():
            self.run_owed_callbacks()  # its on_failed, owed with the cancel
        if state == "running":
            attempt = self.attempts.with_key(key)
            if attempt is None:
                return "running elsewhere"  # no process of this master: nothing to signal
            self.journal().request_cancel(attempt.attempt_id)  # survives a replacement or a crash mid-cancel
            self.hangs.cancel(attempt, self.clock.monotonic())
        return state or "unknown"
