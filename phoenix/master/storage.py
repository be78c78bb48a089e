"""The journal the master writes now, and what it does when storage fails
under it (store/outage.py says what an outage is). It owns the current
store: the other parts read it through `journal()` (a rebuilt state
directory, or a failed exec, opens it again) and run each journal step
through `guarded`, which turns a storage error into an outage instead of
taking the master down. Once a loop turn it retries an outage that is due
(and, once the journal takes writes again, lets the parts that waited go
on), and once a second it checks the state directory: a journal file that
vanished or was replaced is rebuilt from the open journal, with the
sockets, lock and pidfile; else statefiles.py puts back what was removed.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol, Sized

from phoenix import log
from phoenix.app import App
from phoenix.linux.clock import Clock
from phoenix.linux.paths import StatePaths
from phoenix.linux.pidfile import AlreadyRunning, PidFile
from phoenix.store.base import SQLITE, FileStore, JournalError, Store
from phoenix.store.open import open_store
from phoenix.store.outage import STORAGE_ERRORS, JournalOutage, file_identity
from phoenix.wire import control as control_socket
from phoenix.wire.control import ControlServer

INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR
event = log.event
STATE_DIR_CHECK = 1.0


class StateDir(Protocol):
    """The state directory's other files (statefiles.StateFiles)."""

    def check(self) -> None: ...
    def rebind_heartbeat(self) -> None: ...


class Waiting(Protocol):
    """What waits for the journal to take writes again (scheduler.Scheduler)."""

    def wake(self) -> None: ...
    def reconcile_claims(self) -> None: ...  # a claim that failed may have committed


class Owed(Protocol):
    """Callbacks that could not start in an outage (settler.CallbackSettler)."""

    def run_owed(self) -> None: ...


class Listening(Protocol):
    """A shared store's lease (leasekeeper.LeaseKeeper)."""

    def open_listener(self) -> None: ...


class Storage:
    def __init__(self, journal: Store, paths: StatePaths, outage: JournalOutage, clock: Clock, attempts: Sized,
                 app: App | None, pidfile: PidFile, retry_unheld: Callable[[], None],
                 state_files: Callable[[], StateDir], control: Callable[[], ControlServer],
                 waiting: Callable[[], Waiting], owed: Callable[[], Owed],
                 leases: Callable[[], Listening | None]) -> None:
        """`journal`: the store just opened. `attempts`: the running
        attempts (counted in the log). `retry_unheld()`: hold the finals an
        outage left unheld (heartbeats.HeartbeatIntake). The parts built
        after this one (`state_files`, `control`, `waiting`, `owed`,
        `leases`) are read when first needed, once the master is open."""
        self.store = journal
        self.identity = None if journal.shared else file_identity(paths.journal)
        self.paths = paths
        self.outage = outage
        self.clock = clock
        self.attempts = attempts
        self.app = app
        self.pidfile = pidfile
        self.retry_unheld = retry_unheld
        self.state_files = state_files
        self.control = control
        self.waiting = waiting
        self.owed = owed
        self.leases = leases
        self.next_state_dir_check = 0.0

    def journal(self) -> Store:
        """The store open now."""
        return self.store

    def guarded(self, operation: Callable[[], Any], retry: bool = False) -> None:
        """Run a step that writes or reads the journal; a storage error starts
        an outage instead of taking the master down. With `retry`, a write
        that failed is kept and replayed in order once the journal recovers."""
        try:
            if retry and self.outage.active:
                self.outage.failed(RuntimeError(self.outage.error), _name(operation), operation)
                return
            operation()
        except STORAGE_ERRORS as exc:
            self.outage.failed(exc, _name(operation), operation if retry else None)

    def check_state_dir_now(self) -> None:
        """The state-directory check at once, not at its next second (before a heartbeat_timeout kill)."""
        self.next_state_dir_check = 0.0
        self.watch_storage()

    def watch_storage(self) -> None:
        now = self.clock.monotonic()
        if self.outage.active and self.outage.retry_if_due(self.store.probe_write):
            self.retry_unheld()
            waiting = self.waiting()
            waiting.wake()
            self.guarded(waiting.reconcile_claims)  # a claim that failed may have committed
            self.guarded(self.owed().run_owed)  # any that could not be started meanwhile
            self.outage.settled()
        if now < self.next_state_dir_check:
            return
        self.next_state_dir_check = now + STATE_DIR_CHECK
        if not self.store.shared and file_identity(self.paths.journal) != self.identity:
            self.rebuild_state_dir()
        else:
            self.state_files().check()

    def rebuild_state_dir(self) -> None:
        """The journal file vanished or was replaced under us: rebuild the state
        directory from the open journal, and rebind the sockets, lock and pidfile."""
        if not self.outage.active:  # else said already, and retried every second
            event(ERROR, "state_dir_lost", path=self.paths.root,
                  effect="rebuilding it from the open journal; running children are kept")
        try:
            self.paths.ensure()
            assert isinstance(self.store, FileStore)  # (a shared store has no file to lose)
            self.store.restore_file()
            self.store.close()
            self.reopen_journal()
            self.identity = file_identity(self.paths.journal)
            self.pidfile.rebuild()
            self.state_files().rebind_heartbeat()
            self.control().rebind(control_socket.bind(self.paths.control_socket))
        except (*STORAGE_ERRORS, AlreadyRunning, JournalError) as exc:
            self.outage.failed(exc, "rebuild_state_dir")
            return
        event(WARNING, "state_dir_rebuilt", path=self.paths.root, running=len(self.attempts))

    def reopen_journal(self) -> None:
        """After a failed exec: the journal was closed for it (a shared store
        connects again by itself, and keeps its lease)."""
        if self.store.shared:
            leases = self.leases()
            if leases is not None:
                leases.open_listener()  # closed with the store for the exec
            return
        self.store = open_store(SQLITE, self.paths.journal, upgrade="always")
        if self.app is not None:
            self.app.journal = self.store


def _name(operation: Callable[..., Any]) -> str:
    inner = getattr(operation, "func", operation)
    return getattr(inner, "__name__", "journal write")
