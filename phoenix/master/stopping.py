"""The way out: when the master may exit, and what a stop does.

A stop (TERM), a drain, --leave-running or a hand-over moves the master's
state (the master is its one writer) and ends, keeps or leaves its children;
the loop ends once the state is stopped and no journal write that failed
still waits to be replayed (`holds_unwritten`): an outcome the journal has
not taken keeps the master, and the child holding it, waiting, and says
why once. `close` then records the stop (or says why it could not), lets the
sockets and the pidfile go, and answers a `phoenix stop --wait` with the
exit code (exits.py)."""

from __future__ import annotations

import logging
import os
import signal
from typing import Callable, Protocol

from phoenix import log
from phoenix.config import Config
from phoenix.linux import pid1, systemd
from phoenix.linux.clock import Clock
from phoenix.linux.paths import StatePaths
from phoenix.linux.pidfile import PidFile
from phoenix.master import exits, handoff
from phoenix.master.attempts import AttemptTable
from phoenix.master.callbacks import CallbackRunner
from phoenix.master.hangs import HangKiller, signal_attempt
from phoenix.master.leasekeeper import LeaseKeeper
from phoenix.master.settler import CallbackSettler
from phoenix.master.spawner import Spawner
from phoenix.rules.states import MasterState, StopMode
from phoenix.store.base import Store, StoreUnavailable
from phoenix.store.outage import STORAGE_ERRORS, JournalOutage
from phoenix.wire.control import ControlServer

INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR
event = log.event


class Stopped(Protocol):
    """What only the master decides (arbiter.Master): its state, through its one writer."""

    state: MasterState
    slots: int
    generation: int

    def change_state(self, new: MasterState) -> None: ...


class Stopping:
    def __init__(self, master: Stopped, config: Callable[[], Config], journal: Callable[[], Store],
                 outage: JournalOutage, attempts: AttemptTable, callbacks: CallbackRunner,
                 settler: CallbackSettler, spawner: Spawner, hangs: HangKiller, control: ControlServer,
                 paths: StatePaths, pidfile: PidFile, leases: LeaseKeeper | None,
                 maybe_pending: Callable[[], bool], run_started_at: float, clock: Clock) -> None:
        """`journal`: the store open now (storage.Storage). `maybe_pending()`:
        the scheduler may have jobs waiting (else --exit-when-done asks the
        journal). `run_started_at`: wall time the run began (exits.py counts
        its jobs)."""
        self.master = master
        self.config = config
        self.journal = journal
        self.outage = outage
        self.attempts = attempts
        self.callbacks = callbacks
        self.settler = settler
        self.spawner = spawner
        self.hangs = hangs
        self.control = control
        self.paths = paths
        self.pidfile = pidfile
        self.leases = leases
        self.maybe_pending = maybe_pending
        self.run_started_at = run_started_at
        self.clock = clock
        self.stop_mode: StopMode | None = None
        self.exit_wait_noted = False  # stop_waits_for_journal said
        self.stop_error: str | None = None  # why the stop itself could not be recorded
        self.crash_error: str | None = None  # what ended the loop, if an error did
        self.exit_code = 0
        self.stop_signal: int | None = None  # what asked this master to stop (see exits.py)
        # When a drain's time runs out (monotonic, on `clock`): the master holds it, not the
        # `phoenix stop` that asked, so that it holds if that command dies (Ctrl-C, an SSH drop).
        self.drain_deadline: float | None = None

    def leave_children_running(self) -> None:
        """Fork mode, once the new master is ready: exit without touching the
        children; they are orphaned, keep beating, and the new master adopts them."""
        self.stop_mode = StopMode.HANDED_OVER
        self.attempts.clear()
        self.master.change_state(MasterState.STOPPED)

    def check_finished(self) -> None:
        if self.master.state in (MasterState.DRAINING, MasterState.STOPPING):
            self.note_exit_waits()
        if self.attempts or self.callbacks.running:
            return
        if self.master.state in (MasterState.DRAINING, MasterState.STOPPING):
            self.master.change_state(MasterState.STOPPED)
        elif (self.master.state == MasterState.RUNNING and self.config().exit_when_done
              and (not self.maybe_pending() or self.master.slots == 0)):
            # (With no slots, pending jobs are never looked for: ask the journal.)
            counts = self.batch_counts()
            if counts["pending"] == 0 and counts["running"] == 0:
                event(INFO, "monitoring_complete", finished=counts["finished"], failed=counts["failed"], running=0)
                self.exit_code = exits.batch_done(counts)
                self.master.change_state(MasterState.STOPPED)

    def unrecorded_outcomes(self) -> int:
        """Outcomes this master has that the journal has not taken yet: finals
        received and not held (their children wait for the ack), and outcome
        records queued by an outage."""
        waiting = sum(1 for a in self.attempts.values() if a.holds_only_copy())
        return waiting + sum(1 for doing, _redo in self.outage.unwritten if doing == "record")

    def holds_unwritten(self) -> bool:
        """Journal writes that failed and wait to be replayed: the master does
        not exit with them (a stop, a drain, --leave-running, a hand-over), or
        outcomes and callbacks done would be lost; it retries every second
        until the journal takes them. Not for a damaged journal, which no wait
        mends: close() says what is lost with it."""
        if not self.holds_unwritten_waits():
            return False
        self.note_exit_waits()
        return True

    def holds_unwritten_waits(self) -> bool:
        """Failed journal writes that a wait may yet land (the journal is not damaged)."""
        return bool(self.outage.unwritten) and not self.outage.damaged

    def note_exit_waits(self) -> None:
        """Say once why a stop is waiting for the journal."""
        if self.exit_wait_noted or not self.outage.active:
            return
        held = self.unrecorded_outcomes()
        if not any(a.holds_only_copy() for a in self.attempts.values()) and not self.holds_unwritten_waits():
            return  # nothing keeps this stop waiting
        self.exit_wait_noted = True
        event(ERROR, "stop_waits_for_journal", unrecorded_outcomes=held, unwritten=len(self.outage.unwritten),
              error=self.outage.error,
              effect="the master exits once the journal takes them (retried every 1 s): free space or fix "
                     "the state directory; a SIGKILL now leaves them to the children that still hold them")

    def batch_counts(self) -> dict[str, int]:
        return self.journal().batch_counts(self.run_started_at)

    def begin_stop(self, mode: StopMode, signum: int | None = None,
                   interrupt_after: float | None = None) -> float | None:
        """Move to the stop `mode` asks. A drain with `interrupt_after` (s)
        interrupts the jobs still running once that much time has passed
        (interrupt_drain_if_due); returns the seconds left until a drain's
        deadline, if the drain has one (None otherwise)."""
        if self.master.state == MasterState.STOPPED:
            return None  # stopped already; only waiting to write what the journal would not take (holds_unwritten)
        self.spawner.discard()
        self.stop_signal = self.stop_signal or signum or exits.STOP_MODE_SIGNALS[mode]
        if self.master.state == MasterState.STOPPING and mode == StopMode.TERM:
            self.stop_again(signum)
            return None
        if mode == StopMode.LEAVE:
            event(INFO, "stop", mode="leave-running", running=len(self.attempts))
            self.stop_mode = StopMode.LEAVE
            self.attempts.clear()  # they keep running; the next master adopts them
            self.master.change_state(MasterState.STOPPED)
            return None
        if mode == StopMode.DRAIN:
            if self.master.state in (MasterState.RUNNING, MasterState.DEGRADED):
                event(INFO, "drain", running=len(self.attempts))
                self.master.change_state(MasterState.DRAINING)
            if self.master.state != MasterState.DRAINING:
                return None  # stopping already: a drain asked now has nothing left to wait for
            return self.set_drain_deadline(interrupt_after)
        event(INFO, "stop", mode="term", running=len(self.attempts))
        self.master.change_state(MasterState.STOPPING)
        now = self.clock.monotonic()
        for attempt in self.attempts.values():
            if attempt.holds_only_copy():
                # Its job is done: the child only waits for its outcome's ack (or
                # writes it to the outbox), and holds it until then; a signal
                # would end the only copy the journal could not take yet.
                continue
            self.hangs.interrupt(attempt, now)
        return None

    def stop_again(self, signum: int | None) -> None:
        """A stop while stopping. A repeated TERM or `phoenix stop` (a
        kubelet's TERM after a preStop drain, two operators) never cuts a
        job's kill_grace short: the jobs were asked already, and keep their
        time to save their place. Only SIGINT (a second Ctrl-C in a terminal)
        is the deliberate fast path: SIGKILL now."""
        if signum != signal.SIGINT:
            event(INFO, "stop_under_way", running=len(self.attempts),
                  effect="each job keeps its kill_grace to end; SIGINT (Ctrl-C) kills them at once")
            return
        event(WARNING, "stop_now", running=len(self.attempts))
        for attempt in list(self.attempts.values()):
            if not attempt.holds_only_copy():  # (see below)
                signal_attempt(attempt, signal.SIGKILL)

    def set_drain_deadline(self, seconds: float | None) -> float | None:
        """A drain's deadline `seconds` from now; of two (a second `phoenix
        stop --drain --timeout` during a drain), the earlier holds: a stop may
        bring the interruption nearer, never put it off. Returns the seconds
        left, or None when the drain has no deadline."""
        now = self.clock.monotonic()
        if seconds is not None and (self.drain_deadline is None or now + seconds < self.drain_deadline):
            self.drain_deadline = now + seconds
            event(INFO, "drain_deadline", seconds=f"{seconds:g}", running=len(self.attempts))
        if self.drain_deadline is None:
            return None
        left = max(0.0, self.drain_deadline - now)
        self.interrupt_drain_if_due()  # --timeout 0: now
        return left

    def next_deadline(self) -> float | None:
        """When the loop must wake to interrupt a drain out of time."""
        return self.drain_deadline if self.master.state == MasterState.DRAINING else None

    def interrupt_drain_if_due(self) -> None:
        """A drain whose time ran out: the jobs still running are interrupted
        politely, as by `phoenix stop` (TERM: phoenix.Interrupted, KILL after
        kill_grace; outcome `interrupted`, no retry used)."""
        due = self.next_deadline()
        if due is None or self.clock.monotonic() < due:
            return
        event(INFO, "drain_out_of_time", running=len(self.attempts))
        self.begin_stop(StopMode.TERM)

    def close(self) -> None:
        self.spawner.discard()
        self.callbacks.wait_all(self.config().callback_timeout)
        self.settler.settle(flush=True)
        self.callbacks.shutdown()
        self.control.close()
        try:
            self.record_stop()
        except StoreUnavailable as exc:  # a shared store out of reach: its lease lapses, and others recover
            event(ERROR, "stop_unrecorded", error=str(exc), unwritten=len(self.outage.unwritten),
                  effect="the lease lapses; another master recovers what this one could not record")
            self.stop_error = str(exc)
            self.exit_code = self.exit_code or 1
        except STORAGE_ERRORS as exc:  # a full disk, say: every outcome is recorded (holds_unwritten), not the stop
            held = self.unrecorded_outcomes()
            event(ERROR, "stop_unrecorded", error=str(exc), unrecorded_outcomes=held,
                  effect=(f"{held} outcome(s) stay with their children, which the next master adopts; "
                          if held else "every outcome is recorded; ")
                  + "the next master finds this one's stop missing, as after a crash")
            self.stop_error = str(exc)
            self.exit_code = self.exit_code or 1
        if self.outage.unwritten:  # only with a damaged journal (holds_unwritten)
            event(ERROR, "exit_unwritten", unwritten=len(self.outage.unwritten), error=self.outage.error,
                  effect="these journal writes are lost with the damaged journal; outcomes in the outbox and "
                         "with running children are kept for the next master")
        if self.stop_mode != StopMode.HANDED_OVER:
            for path in (self.paths.heartbeat_socket, self.paths.control_socket):
                path.unlink(missing_ok=True)
            systemd.notify("STOPPING=1")
        self.pidfile.release()
        self.journal().close()
        event(INFO, "exit", pid=os.getpid(), code=self.exit_code)
        error = f"it could not record its stop ({self.stop_error})" if self.stop_error else self.crash_error
        # As PID 1, a `phoenix stop` run in the namespace (a preStop hook) would die with this master.
        linger = pid1.STOP_CLIENT_EXIT_WAIT if pid1.is_namespace_init() else 0.0
        self.control.report_exit({"ok": error is None, "exit_code": self.exit_code, "error": error}, linger)

    def record_stop(self) -> None:
        if self.stop_mode == StopMode.HANDED_OVER:
            # The sockets, the pidfile and the journal's meta are the new master's now.
            handoff.oldbin(self.paths).unlink(missing_ok=True)
            self.journal().record_event("handed_over", self.master.generation, os.getpid(), None)
            return
        self.journal().set_meta(state="stopped")
        self.journal().record_event("master_stop", self.master.generation, os.getpid(), self.stop_mode)
        if self.leases is not None:
            self.leases.release("left" if self.stop_mode == StopMode.LEAVE else "stopped")
