"""The master: one single-threaded event loop that builds the parts and runs
them in order. What they share is built first and handed to each through its
constructor: the clock, the loop (loop.py), the attempt table (attempts.py),
the counters, the job specs (specs.py); a part calls another through the
callable or small protocol it was given, never through the master. Signals
and control requests become commands (rules/commands.py); every decision is
a pure function of its own module (policy, liveness, outcomes); every state
field has one writer that checks the move (rules/states.py).

    while state is not stopped:
        wait_for_events()             # sleep until the earliest deadline any part reports
                                      # (next_deadline); heartbeats, signals, control requests,
                                      # pidfds; a master that overslept gives every child grace
        run_commands()                # signals, in arrival order, through execute()
        reaper.reap()                 # exits the fork server reports; our own children (SIGCHLD +
                                      # wait4); orphans we subreap
        hangs.run_due_timers()        # liveness checks and kills due on the timer heap
        ticker.run_if_due()           # delayed jobs due -> pending; periodic ticks inserted (ticker.py)
        scheduler.spawn_pending_jobs()  # through the one slot gate (policy.may_start_jobs)
        spawner.replenish()           # the spare child (and the fork server, if it must be restarted)
        settler.settle()              # callbacks that ended or overran
        handoff steps, stopping.check_finished, title, watchdog, storage.watch_storage

Everything worth keeping is in the journal first, so that a replacement of
this process (handoff.py), a stop or a crash loses nothing.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import socket
import time
from typing import Any, Callable

from phoenix import log
from phoenix.app import App
from phoenix.config import Config, parse_max_memory
from phoenix.linux import lineage, systemd
from phoenix.linux.clock import SYSTEM, Clock
from phoenix.linux.paths import StatePaths
from phoenix.linux.pidfile import PidFile
from phoenix.linux.signals import SignalFD, set_child_subreaper
from phoenix.linux.sockets import bind_heartbeat
from phoenix.linux.untrusted import is_number
from phoenix.master import exits, handoff, metrics
from phoenix.master.attempts import Attempt, AttemptTable
from phoenix.master.callbacks import CallbackRunner
from phoenix.master.cgroups import JobCgroups
from phoenix.master.dispatch import Dispatcher
from phoenix.master.hangs import HangKiller, signal_attempt
from phoenix.master.heartbeats import HeartbeatIntake
from phoenix.master.leasekeeper import LeaseKeeper
from phoenix.master.longjobs import ProgressWriter
from phoenix.master.loop import Loop
from phoenix.master.memory import MemoryWatchdog, Watchers
from phoenix.master.reaper import Reaper
from phoenix.master.recorder import OutcomeRecorder
from phoenix.master.scheduler import Scheduler
from phoenix.master.settler import CallbackSettler
from phoenix.master.slots import SlotLimit
from phoenix.master.spawner import Spawner
from phoenix.master.specs import JobSpecs
from phoenix.master.statefiles import StateFiles
from phoenix.master.status import Status
from phoenix.master.stopping import Stopping
from phoenix.master.storage import Storage
from phoenix.master.ticker import Ticker
from phoenix.rules.commands import HANDLED_SIGNALS, SIGNAL_COMMANDS
from phoenix.rules.liveness import master_was_away
from phoenix.rules.policy import RestartBudget, may_start_jobs
from phoenix.rules.states import MASTER_TRANSITIONS, HandoffPhase, KillReason, MasterState, StopMode, check_move
from phoenix.store.base import (
    JournalError,
    SharedStore,
    default_node,
    is_url,
    redact,
)
from phoenix.store.open import open_store
from phoenix.store.outage import JournalOutage
from phoenix.wire import control as control_socket
from phoenix.wire.control import ControlServer

INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR
event = log.event


class Master:
    # Built in open(), once the store is open (before any of them is called).
    handoff: handoff.Handoff
    dispatcher: Dispatcher
    state_files: StateFiles
    status: Status
    recorder: OutcomeRecorder
    settler: CallbackSettler
    reaper: Reaper
    scheduler: Scheduler

    def __init__(self, app: App | None, app_spec: str | None, config: Config,
                 reload_config: Callable[[], Config], config_file: str | None = None,
                 degraded_reason: str | None = None, clock: Clock = SYSTEM) -> None:
        self.clock = clock  # every part's time: built first, handed to each (phoenix.testing.FakeClock in tests)
        self.app = app  # None: degraded, the new code could not be loaded (see announce_ready)
        self.degraded_reason = degraded_reason
        self.app_spec = app_spec
        self.config_file = config_file  # handed to the preflight, which must judge the same configuration
        self.config = config
        self.reload_config = reload_config
        self.paths = StatePaths(config.state_dir)
        self.slots = config.workers
        self.slot_limit = SlotLimit(config.workers)
        self.loop = Loop(clock)
        self.children = AttemptTable()  # pid -> running attempt
        self.signals: list[int] = []
        self.state = MasterState.STARTING
        self.budget = RestartBudget(config.restart_intensity, config.restart_period)
        self.counters = metrics.Counters()
        self.specs = JobSpecs(app, lambda: self.config)
        self.intake = HeartbeatIntake(self.children, self.counters, os.getuid(),
                                      lambda attempts: self.recorder.hold_finals(attempts),
                                      lambda: self.reaper.child_may_have_exited(), clock,
                                      self.hold_checkpoints)
        self.hangs = HangKiller(self.children, self.loop, lambda: self.config, self.counters, self.intake,
                                self.read_heartbeats, lambda: self.state_files.heartbeat_restored(),
                                self.note_kill)
        self.progress = ProgressWriter(lambda: self.storage.journal(), self.intake.reported, self.clock.monotonic)
        self.memory = MemoryWatchdog(self.children, self.counters, self.clock.monotonic,
                                     lambda: parse_max_memory(self.config.max_memory, "max_memory"),
                                     lambda attempt: signal_attempt(attempt, signal.SIGKILL))
        self.cgroups = JobCgroups(config.state_dir, self.counters, self.clock.monotonic)  # chosen in open()
        self.watchers = Watchers(self.hangs, self.memory, self.cgroups, self.any_memory_limit)
        self.replacements = 0
        self.last_woke = self.clock.monotonic()  # when the loop last returned from its sleep
        self.started_at = time.time()
        self.spawner = Spawner(app_spec, lambda: self.config, self.paths, self.specs, self.loop, lambda: self.slots,
                               self.wants_spare)
        self.watchdog = systemd.Watchdog(clock)  # WATCHDOG=1 when systemd's WatchdogSec asks for it
        self.outage = JournalOutage(redact(config.store) if is_url(config.store) else str(self.paths.journal),
                                     clock)
        self.node = config.node or default_node(config.state_dir)  # its name in a shared store
        self.leases: LeaseKeeper | None = None  # a shared store's lease (leasekeeper.py)

    def change_state(self, new: MasterState) -> None:
        """The one writer of `state`."""
        self.state = check_move(MASTER_TRANSITIONS, self.state, new)

    # -- start-up ---------------------------------------------------------------

    def open(self) -> None:
        # Before any thread of ours starts: threads inherit the blocked mask.
        self.signal_fd = SignalFD(HANDLED_SIGNALS)
        set_child_subreaper()
        self.paths.ensure()
        inherited = handoff.inherited_fds()
        if inherited:
            # After an exec: anything the old image leaked, beyond what it handed over, goes.
            handoff.close_stray_fds(keep=set(inherited.values()) | log.stream_fds())
        self.pidfile = PidFile(self.paths.pidfile, self.paths.lockfile, inherited.get("lock"))
        self.pidfile.acquire()
        try:
            # Under the lock (the group is this state directory's), before any child or thread of ours starts.
            self.cgroups.open(self.config.memory_cgroups, self.any_memory_limit())
            self._open_under_lock(inherited)
        except BaseException:
            # A start that fails here (a socket path held by another process, a
            # metrics port in use, a corrupt journal) leaves no pidfile naming
            # a master that is gone.
            self.spawner.discard()
            self.pidfile.release()
            raise

    def _open_under_lock(self, inherited: dict[str, int]) -> None:
        # After an exec, the preflight checked the journal.
        self.storage = Storage(open_store(self.config.store, self.paths.journal, node=self.node,
                                          verify=not inherited, lease_ttl=self.config.lease_ttl, upgrade="always"),
                               self.paths, self.outage, self.clock, self.children, self.app, self.pidfile,
                               self.intake.retry_unheld, lambda: self.state_files, lambda: self.control,
                               lambda: self.scheduler, lambda: self.settler, lambda: self.leases)
        journal = self.storage.journal()
        # Recorded in the journal only once ready: a start that fails records no generation.
        try:
            self.generation = int(journal.meta("generation", 0, counter=True)) + 1
        except JournalError as exc:
            handed = handoff.handed_generation() if inherited else None
            if handed is None:  # a first start: refused, in one line naming the row and the fix
                raise
            # A replacement: its predecessor knew it; refusing would leave every running child unwatched.
            event(WARNING, "generation_damaged", row="meta generation", generation=handed, error=str(exc)[:300],
                  effect="a replacement: this image takes the generation its predecessor handed over, and writes "
                         "it back once ready")
            self.generation = handed
        if not inherited:  # a run starts here; replacement images carry it on (see exits.py)
            journal.set_meta(run_started_at=self.started_at)
        run_started_at = journal.meta("run_started_at", self.started_at)
        if not is_number(run_started_at):  # another tool's
            event(WARNING, "run_start_unreadable", value=repr(run_started_at)[:200],
                  effect="this run's jobs are counted from this image's start")
            run_started_at = self.started_at
        self.run_started_at = float(run_started_at)
        if self.app is not None:
            self.app.journal = journal
        self.slots = self.slot_limit.fit(self.slots, replacement=bool(inherited))
        self.loop.open()
        if self.app is not None:
            # Now: the app is imported, and neither the callback nor the
            # metrics threads have started.
            self.spawner.check_app_threads()
        if "heartbeat" in inherited:
            heartbeat = socket.socket(fileno=inherited["heartbeat"])
            heartbeat.set_inheritable(False)
        else:
            heartbeat = bind_heartbeat(self.paths.heartbeat_socket)
        self.intake.listen(heartbeat)
        for pid, fd in handoff.inherited_links(inherited):  # each child's connection, kept across the exec
            self.intake.adopt_link(fd, pid)
        if "control" in inherited:
            control = socket.socket(fileno=inherited["control"])
            control.setblocking(False)
        else:
            control = control_socket.bind(self.paths.control_socket)
        self.intake.watch(self.loop.selector)
        self.callbacks = CallbackRunner(self.config.callback_threads, self.clock)
        self.settler = CallbackSettler(self.app, self.storage.journal, self.callbacks, lambda: self.config,
                                       self.counters, self.clock, self.storage.guarded, self.callbacks_held)
        if journal.shared:
            assert isinstance(journal, SharedStore)
            self.leases = LeaseKeeper(self, self.hangs.interrupt_all, journal, lambda: self.config, self.specs,
                                      self.children, self.loop, lambda: self.budget, self.callbacks_held,
                                      self.settler.run_owed, self.jobs_may_be_pending)
            self.leases.register(os.getpid(), self.generation, self.started_at, self.app_spec)
        self.control = ControlServer(control, self.loop.selector,
                                     lambda request: self.dispatcher.control_request(request),
                                     lambda why: self.counters.reject(why), clock=self.clock)
        self.stopping = Stopping(self, lambda: self.config, self.storage.journal, self.outage, self.children,
                                 self.callbacks, self.settler, self.spawner, self.hangs, self.control, self.paths,
                                 self.pidfile, self.leases, lambda: self.scheduler.maybe_pending,
                                 self.run_started_at, self.clock)
        self.handoff = handoff.Handoff(self, lambda: self.config, self.paths, self.storage.journal, self.outage,
                                       self.loop, self.intake, self.control, self.pidfile, self.children,
                                       self.settler.run_owed,
                                       lambda: bool(self.callbacks.running) or self.settler.holds_done(),
                                       self.storage.reopen_journal, self.stopping.leave_children_running)
        self.status = Status(self, self.app, self.app_spec, self.storage.journal, self.children, self.counters,
                             self.spawner, self.handoff, self.outage, self.clock, self.stopping.unrecorded_outcomes,
                             self.watchers.enforcer)
        # Sockets, pidfile and lock put back if removed under us.
        self.state_files = StateFiles(self.paths, self.children, self.intake, self.control, self.pidfile,
                                      lambda: self.handoff.successor() is not None, self.storage.check_state_dir_now,
                                      self.clock)
        self.recorder = OutcomeRecorder(self.storage.journal, lambda: self.config, lambda: self.budget, self.specs,
                                        self.paths, self.counters, self.clock, self.storage.guarded, self.settler,
                                        self.callbacks_held, lambda: self.scheduler.wake())
        self.reaper = Reaper(self.storage.journal, self.children, self.loop, self.specs, self.recorder, self.spawner,
                             self.watchers, self.read_heartbeats, self.handoff.successor)
        self.scheduler = Scheduler(self.storage.journal, lambda: self.config, self.generation, str(self.paths.output),
                                   self.specs, self.children, self.free_slots, self.shared_poll, self.spawner,
                                   self.outage, self.recorder, self.settler.start, self.watchers.watch, self.counters,
                                   self.clock, self.watchers.place)
        self.ticker = Ticker(self.storage.journal, self.app, lambda: self.state, self.counters, self.scheduler.wake,
                             self.clock)
        self.dispatcher = Dispatcher(self, self.storage.journal, self.status.live, self.scheduler.wake,
                                     self.ticker.wake, self.stopping, self.handoff, self.spawner.discard,
                                     self.children, self.hangs, self.settler.run_owed, self.clock)
        self.loop.watch(self.callbacks.wake_read, self.callbacks.drain_wakeups)
        # Signals blocked across an exec (handoff) are pending in the signalfd
        # and read once the loop runs, after adoption.
        self.loop.watch(self.signal_fd, self._read_signals)
        self.replacements = journal.count_events("replaced") + (1 if inherited else 0)
        if self.config.metrics:
            self.counters.histograms, (host, port) = metrics.serve(self, self.config.metrics)
            event(INFO, "metrics", address=f"http://{host}:{port}/metrics")
        # Guarded: a new image on a disk that filled during its exec must not crash with the children running
        # (it runs in an outage, starting nothing, until the journal takes writes again).
        self.storage.guarded(functools.partial(journal.record_event, "master_start" if not inherited else "replaced",
                                               self.generation, os.getpid(), self.app_spec))

    def _read_signals(self) -> None:
        for signum, sender, uid in self.signal_fd.read():
            if signum == signal.SIGCHLD:
                self.reaper.child_may_have_exited()
                continue
            try:
                attempt_pid = lineage.owning_attempt(sender, self.children) if sender else None
            except OSError:  # no descriptor or memory to read /proc: untraceable, obeyed (docs/failure-modes.md)
                attempt_pid = None
            if attempt_pid is not None:  # a job cannot stop, reload or reconfigure the master that runs it
                owner = self.children[attempt_pid]
                event(WARNING, "signal_ignored", signal=signal.Signals(signum).name, sender=sender, uid=uid,
                      job=owner.key, attempt=owner.number, reason="sent by a process of a running job")
                continue
            self.signals.append(signum)

    def announce_ready(self) -> None:
        self.intake.give_grace(self.clock.monotonic())  # grace for adopted children starts now
        if self.app is None:
            self.change_state(MasterState.DEGRADED)
            # The reason too: the dashboard reads the store, never this loop.
            self.storage.journal().set_meta(generation=self.generation, master_pid=os.getpid(),
                                            started_at=self.started_at, app=self.app_spec, state="degraded",
                                            degraded_reason=self.degraded_reason)
            self.handoff.became_degraded(self.degraded_reason or "no app loaded")
            event(ERROR, "degraded", generation=self.generation, pid=os.getpid(), running=len(self.children),
                  reason=(self.degraded_reason or "").splitlines()[0] if self.degraded_reason else "-",
                  effect="watching and recording the running jobs, starting none; send USR2 to load fixed code")
            self.status.update_title(force=True)
            return
        self.change_state(MasterState.RUNNING)
        self.storage.journal().set_meta(generation=self.generation, master_pid=os.getpid(),
                                        started_at=self.started_at, app=self.app_spec, state="running",
                                        degraded_reason=None)
        self.register_pools(self.app)
        self.handoff.became_ready()
        event(INFO, "ready", generation=self.generation, pid=os.getpid(), app=self.app_spec or "-",
              workers=self.slots, running=len(self.children))
        for hook in self.app.startup_hooks:
            try:
                hook(self.app)
            except Exception:  # noqa: BLE001 - reported, and the master carries on
                log.log.exception("startup_hook_failed hook=%s", getattr(hook, "__qualname__", hook))
        self.settler.run_owed()
        self.status.update_title(force=True)

    # -- the loop -----------------------------------------------------------------

    def run(self) -> int:
        self.open()
        try:
            self.reaper.adopt_running_attempts()
            self.cgroups.clean_leftovers({attempt.attempt_id for attempt in self.children.values()})
            self.announce_ready()
            self.last_woke = self.clock.monotonic()  # start-up (imports, a journal check) is not absence
            while self.state != MasterState.STOPPED or self.stopping.holds_unwritten():
                self.wait_for_events()
                self.run_commands()
                self.reaper.reap()
                self.hangs.run_due_timers(self.clock.monotonic())
                self.storage.guarded(self.ticker.run_if_due)
                self.memory.look_if_due()
                self.cgroups.tick()
                self.storage.guarded(self.scheduler.spawn_pending_jobs)
                self.spawner.replenish()
                self.settler.settle()
                self.handoff.continue_when_quiet()
                self.handoff.enforce_deadline()
                self.stopping.interrupt_drain_if_due()
                self.storage.guarded(self.stopping.check_finished)
                if not self.outage.active:  # only shown: never a wait on a store that is out
                    self.storage.guarded(self.progress.write_if_due)
                self.storage.guarded(self.status.update_title)
                self.watchdog.keep_alive()
                self.storage.watch_storage()
                if self.leases is not None:
                    self.leases.tick(self.clock.monotonic())
            stopping = self.stopping
            if stopping.stop_signal is not None and self.config.exit_when_done:
                stopping.exit_code = exits.stopped_batch(stopping.stop_signal, stopping.batch_counts)
        except Exception as exc:
            # Logged here (the log may be a file no one watches for stderr), and
            # the exit status says so: a supervisor must see a crash as a failure.
            self.stopping.exit_code = 1
            self.stopping.crash_error = f"it crashed ({type(exc).__name__}: {exc}): see its log"
            log.log.exception("crash", extra={"phoenix_fields": {"error": f"{type(exc).__name__}: {exc}"}})
        finally:
            self.cgroups.close()
            self.stopping.close()
        return self.stopping.exit_code

    def next_deadline(self, now: float) -> float:
        """The earliest moment any part needs the loop (einhorn's Event.timeout)."""
        deadlines = [self.scheduler.next_deadline(now), self.ticker.next_deadline(), self.watchdog.due,
                     self.outage.next_retry, self.storage.next_state_dir_check, self.control.next_deadline()]
        if self.leases is not None:
            deadlines.append(self.leases.next_deadline())
        timer = self.loop.timers.next_deadline()
        if timer is not None:
            deadlines.append(timer)
        for due in (self.callbacks.next_deadline(self.config.callback_timeout), self.intake.next_deadline(),
                    self.settler.next_deadline(), self.progress.next_deadline(), self.memory.next_deadline(),
                    self.cgroups.next_deadline(), self.stopping.next_deadline()):
            if due is not None:
                deadlines.append(due)
        return min(deadlines)

    def wait_for_events(self) -> None:
        now = self.clock.monotonic()
        self.intake.resume_if_due(now)
        deadline = self.next_deadline(now)
        _began, woke, ready = self.loop.wait(deadline)
        worked, self.last_woke = now - self.last_woke, woke  # the last turn's work, between two wake-ups
        if master_was_away(max(deadline, now), woke, worked, self.config.heartbeat_interval):
            self.give_grace(woke - max(deadline, now) + worked)
        for on_ready in ready:
            on_ready()
        self.control.expire(self.clock.monotonic())
        self.scheduler.poll_if_due(self.clock.monotonic())

    def give_grace(self, away: float) -> None:
        """The master itself was not running (SIGSTOP, a VM pause, swap): read
        every beat that waits (a child that ran meanwhile has some queued on
        its connection), then excuse each silent child the time we were away."""
        self.read_heartbeats()
        self.intake.excuse(away, self.clock.monotonic())
        event(WARNING, "master_was_away", seconds=f"{away:.2f}", running=len(self.children),
              effect="each child's silence over that gap is not counted against it")

    def run_commands(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            command = SIGNAL_COMMANDS.get(signum)
            if command is not None:
                self.dispatcher.execute(command, signum=signum)

    def reload_configuration(self) -> None:
        try:
            new = self.reload_config()
        except Exception as exc:  # noqa: BLE001 - a bad edit must not take the master down
            event(ERROR, "reload_config_failed", error=str(exc))
            return
        changed = {k: (getattr(self.config, k), getattr(new, k)) for k in vars(new)
                   if getattr(self.config, k) != getattr(new, k)}
        self.config = new
        self.set_slots(new.workers)
        self.budget = RestartBudget(new.restart_intensity, new.restart_period)
        self.scheduler.wake()
        event(INFO, "config_reloaded",
              changed=" ".join(f"{k}:{a}->{b}" for k, (a, b) in changed.items()) or "nothing")

    # -- heartbeats and deadlines -------------------------------------------------

    def read_heartbeats(self) -> None:
        if self.handoff.phase != HandoffPhase.FORKED:  # else the new master reads the connections now
            self.intake.read(self.clock.monotonic())

    # -- what only the master decides, asked by the parts --------------------------------

    def any_memory_limit(self) -> bool:
        """A job of the app, or the max_memory setting, has a limit."""
        if self.config.max_memory is not None:
            return True
        return self.app is not None and any(spec.max_memory is not None for spec in self.app.jobs.values())

    def callbacks_held(self) -> bool:
        return self.handoff.busy or self.app is None

    def end_spare(self) -> None:
        self.spawner.discard()
        self.reaper.take_server_reports()  # before an exec: exits only this image heard of

    def hold_checkpoints(self, saves: list[tuple[int, int, int, str]]) -> bool:
        """Checkpoints into the journal before they are acknowledged; False if
        that failed (a storage outage: the child writes its outbox instead)."""
        held = False

        def write() -> None:
            nonlocal held
            self.storage.journal().save_checkpoints(saves)
            held = True

        self.storage.guarded(write)
        return held

    def note_kill(self, attempt: Attempt, reason: KillReason) -> None:
        self.storage.guarded(functools.partial(self.storage.journal().note_kill, attempt.attempt_id, reason))

    def cancel_attempts(self, attempt_ids: set[int]) -> None:
        """Cancels asked in the shared store (any host's `phoenix cancel`):
        each of these attempts running here, not yet being cancelled, is
        ended as a local cancel ends it (TERM, KILL after kill_grace; outcome
        `cancelled`). The store's mark, not this call, survives a crash."""
        now = self.clock.monotonic()
        for attempt in list(self.children.values()):
            if attempt.attempt_id in attempt_ids and attempt.kill_reason != KillReason.CANCELLED:
                self.hangs.cancel(attempt, now)

    def node_taken(self, why: str) -> None:
        """Our lease was recovered, and registering again found the node held by
        another master: two masters must never run under one name. Stop."""
        event(ERROR, "node_taken", node=self.node, error=why, effect="stopping: its children were ended")
        self.stopping.exit_code = 2
        self.stopping.begin_stop(StopMode.TERM)

    def register_pools(self, app: App) -> None:
        """The pools' capacities and each job's pool, from this image's code and
        configuration, into the store (where every master's claims read them)."""
        targets = {target: spec.pool for target, spec in app.jobs.items()}
        for pool, before, now in self.storage.journal().set_pools(self.config.pools, targets):
            event(INFO if before is None else WARNING, "pool_capacity", pool=pool,
                  capacity=now, before="-" if before is None else before)

    def jobs_may_be_pending(self) -> None:
        """A shared store's NOTIFY of a submit: a job to claim, or a delayed job due before the earliest known."""
        self.scheduler.wake()
        self.ticker.wake()

    def shared_poll(self) -> float:
        return self.leases.poll_interval() if self.leases is not None else 2.0

    def lease_state(self) -> str:
        return str(self.state) if self.state in (MasterState.DRAINING, MasterState.DEGRADED) else "running"

    def wants_spare(self) -> bool:
        return (self.state == MasterState.RUNNING and self.handoff.phase == HandoffPhase.IDLE
                and not self.outage.active and self.slots > 0)

    def progress_reported(self) -> list[tuple[str, list[Any]]]:
        """(job key, [done, total, note]) of the running jobs that report progress (the metrics' thread reads it:
        list() copies the values in one step under the GIL)."""
        return [(a.key, a.reported) for a in list(self.children.values()) if a.reported is not None]

    # -- spawning -------------------------------------------------------------------

    def set_slots(self, wanted: int) -> None:
        """The one writer of `slots` (config, reload, TTIN/TTOU): no more than the open-file limit carries."""
        self.slots = self.slot_limit.allow(wanted)

    def free_slots(self) -> int:
        """How many jobs may start now: through the one slot gate (policy.may_start_jobs), and the lease."""
        if not (may_start_jobs(self.state, self.handoff.phase, self.outage.active, len(self.children), self.slots)
                and (self.leases is None or self.leases.may_claim(self.clock.monotonic()))):
            return 0
        return self.slots - len(self.children)


def _hold_standard_fds() -> None:
    """fds 0, 1 and 2 open (on /dev/null where they are closed: a daemon, a
    supervisor that closes them) and inheritable (python-daemon leaves them
    close-on-exec): else the fork server starts without them, the next file
    opened takes the number (fd 1 was its signalfd), and every job child
    gets sys.stdout and sys.stderr of None (a print to stderr failed the
    job) or, where the master's log took fd 0, a log it could write into."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one, as the lower ones are open
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        os.set_inheritable(fd, True)


def run_master(app: App | None, app_spec: str | None, config: Config, load_config: Callable[[], Config],
               config_file: str | None = None, degraded_reason: str | None = None) -> int:
    """Set up logging and run a master until it stops."""
    _hold_standard_fds()
    log.setup(config.log_level, config.log_format, config.log_file)
    gc.freeze()  # objects made so far stay out of the collector: forked children share their pages
    try:
        return Master(app, app_spec, config, load_config, config_file, degraded_reason).run()
    except Exception as exc:
        if handoff.is_replacement() or config.log_file:
            # Said where the operator looks: a daemon's or a new image's stderr may be /dev/null.
            log.event(logging.ERROR, "start_failed", error=f"{type(exc).__name__}: {exc}",
                      effect="this master exits; running children keep running and are adopted by the next "
                             "`phoenix start` (recovered after the lease on a shared store)")
        raise
