"""The master: one single-threaded event loop that forks one child per job
attempt, watches the children's heartbeats, kills the ones that hang, reaps,
re-runs under policy, and reports outcomes to callbacks.

    while running:
        wait_for_events()        # heartbeats, signals, control requests, pidfds
        handle_signals()
        reap_children()          # our own children, through SIGCHLD + wait4
        murder_hung_children()   # deadlines due on the timer heap
        spawn_pending_jobs()
        settle_callbacks()

Everything worth keeping is in the journal first, so that a replacement of
this process (handoff.py), a stop or a crash loses nothing.
"""

from __future__ import annotations

import functools
import gc
import heapq
import itertools
import json
import logging
import os
import resource
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from setproctitle import setproctitle

from phoenix import child, log, metrics, procfs, protocol, systemd
from phoenix.app import App, AppError, JobInfo, JobSpec, decode_params, resolve_target
from phoenix.callbacks import CallbackRunner
from phoenix.config import Config
from phoenix.control import ControlServer
from phoenix.journal import Journal, JournalError, Job, OpenAttempt
from phoenix.paths import StatePaths
from phoenix.pidfile import AlreadyRunning, PidFile
from phoenix.policy import RestartBudget, backoff_delay, classify_exit
from phoenix.sockets import bind_heartbeat, datagram_queue_length
from phoenix.spawner import Spawner
from phoenix import control as control_socket
from phoenix import handoff
from phoenix.outage import STORAGE_ERRORS, JournalOutage, file_identity, restore_journal

HANDLED_SIGNALS = (
    signal.SIGUSR2, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGINT,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGCHLD,
)
INFO, WARNING, ERROR, DEBUG = logging.INFO, logging.WARNING, logging.ERROR, logging.DEBUG
event = log.event
HEARTBEAT_BATCH = 512  # datagrams read per wake-up before other work gets a turn
# A master that has not emptied its heartbeat socket for this long is behind:
# it defers heartbeat kills (a false kill would only add fork work to the backlog).
BACKLOG_GRACE = 0.25
# How long after a child reported a beat that waited more than an interval to
# be sent the master still counts itself overloaded (and defers heartbeat kills).
OVERLOAD_MEMORY = 2.0
MAX_TRACKED_GAP = 1024  # missing sequence numbers remembered per child, to uncount late arrivals
SPAWN_SLICE = 0.25  # seconds of forking per turn of the loop before the other steps get a turn


@dataclass(slots=True, eq=False)
class Attempt:
    """One running attempt: a child we forked, or one we adopted."""

    attempt_id: int
    job_id: int
    key: str
    target: str
    n: int
    pid: int
    spec: JobSpec | None
    started: float  # monotonic
    last_beat: float
    last_progress: float
    own_child: bool = True  # False: adopted from a dead master, watched through a pidfd
    pidfd: int | None = None
    progress: int = 0
    last_seq: int = 0  # -1: not known yet (adopted: the first message sets it)
    missing: set[int] = field(default_factory=set)  # sequence numbers skipped that have not arrived (yet)
    final: dict[str, Any] | None = None  # the finished/failed message, once received
    kill_reason: str | None = None
    kill_detail: str | None = None
    interrupted: bool = False


class Master:
    def __init__(self, app: App, app_spec: str | None, config: Config, reload_config: Callable[[], Config],
                 config_file: str | None = None) -> None:
        self.app = app
        self.app_spec = app_spec
        self.config_file = config_file  # handed to the preflight, which must judge the same configuration
        self.config = config
        self.reload_config = reload_config
        self.paths = StatePaths(config.state_dir)
        self.workers = config.workers
        self.children: dict[int, Attempt] = {}  # pid -> attempt
        self.timers: list[tuple[float, int, str, int, int]] = []  # (when, seq, kind, pid, attempt_id)
        self.timer_seq = itertools.count()
        self.signals: list[int] = []
        self.state = "starting"  # running | draining | stopping | stopped
        self.stop_mode: str | None = None  # "term", "drain", "leave"
        self.budget = RestartBudget(config.restart_intensity, config.restart_period)
        self.counters = metrics.Counters()
        self.histograms: metrics.Histograms | None = None  # only with --metrics (see metrics.py)
        self.replacements = 0
        self.maybe_pending = True
        self.next_pending_poll = 0.0
        self.title_due = 0.0
        self.specs: dict[str, JobSpec] = {}
        self.other_children: dict[int, Callable[[int], None]] = {}  # pid -> on_exit(status), e.g. the preflight
        self.uid = os.getuid()
        self.started_at = time.time()
        self.exit_code = 0
        self.handoff = handoff.Handoff(self)
        self.spawner = Spawner(self)
        self.retired_heartbeats: list[socket.socket] = []  # still read after a state-dir rebuild
        self.drained_at = time.monotonic()  # last time a read found the heartbeat socket empty
        self.overloaded_until = 0.0  # monotonic: children's beats are waiting to get in
        self.overload_warned_at = -60.0
        self.child_exited = True  # SIGCHLD seen since the last reap (True: reconcile at start)
        self.watchdog = systemd.Watchdog()  # WATCHDOG=1 when systemd's WatchdogSec asks for it
        self.outage = JournalOutage(str(self.paths.journal))
        self.next_state_dir_check = 0.0

    # -- start-up ---------------------------------------------------------------

    def open(self) -> None:
        self.paths.ensure()
        inherited = handoff.inherited_fds()
        if inherited:
            # After an exec: anything the old image leaked, beyond what it handed over, goes.
            handoff.close_stray_fds(keep=set(inherited.values()) | log.stream_fds())
        self.pidfile = PidFile(self.paths.pidfile, self.paths.lockfile, inherited.get("lock"))
        self.pidfile.acquire()
        try:
            self._open_under_lock(inherited)
        except BaseException:
            # A start that fails here (a socket path held by another process, a
            # metrics port in use, a corrupt journal) leaves no pidfile naming
            # a master that is gone.
            self.pidfile.release()
            raise

    def _open_under_lock(self, inherited: dict[str, int]) -> None:
        self.journal = Journal(self.paths.journal, verify=not inherited)  # after an exec, the preflight checked it
        self.journal_identity = file_identity(self.paths.journal)
        self.generation = int(self.journal.meta("generation", 0)) + 1
        self.journal.set_meta(generation=self.generation, master_pid=os.getpid(), started_at=self.started_at,
                              app=self.app_spec, state="starting")
        self.app.journal = self.journal
        _raise_fd_limit()
        self.selector = selectors.DefaultSelector()
        if "heartbeat" in inherited:
            self.heartbeat = socket.socket(fileno=inherited["heartbeat"])
            self.heartbeat.setblocking(False)
            protocol.enable_credentials(self.heartbeat)
        else:
            self.heartbeat = bind_heartbeat(self.paths.heartbeat_socket)
        if "control" in inherited:
            control = socket.socket(fileno=inherited["control"])
            control.setblocking(False)
        else:
            control = control_socket.bind(self.paths.control_socket)
        self.selector.register(self.heartbeat, selectors.EVENT_READ, self.read_heartbeats)
        self.control = ControlServer(control, self.selector, self.control_request,
                                     lambda why: self.counters.reject(why))
        self.callbacks = CallbackRunner(self.config.callback_threads)
        self.selector.register(self.callbacks.wake_read, selectors.EVENT_READ, self.callbacks.drain_wakeups)
        self._install_signal_handlers()
        self.replacements = self.journal.count_events("replaced") + (1 if inherited else 0)
        if self.config.metrics:
            self.histograms, (host, port) = metrics.serve(self, self.config.metrics)
            event(INFO, "metrics", address=f"http://{host}:{port}/metrics")
        self.journal.record_event("master_start" if not inherited else "replaced", self.generation, os.getpid(),
                                  self.app_spec)

    def _install_signal_handlers(self) -> None:
        # Handlers only record: the C-level handler writes the signal number
        # into the wake-up pipe, and the loop reads the numbers in order.
        self.signal_read, signal_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(signal_write, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _record_only)
        self.selector.register(self.signal_read, selectors.EVENT_READ, self._read_signals)
        # Signals blocked across an exec (handoff) are pending now; unblock them last.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)

    def _read_signals(self) -> None:
        try:
            while data := os.read(self.signal_read, 256):
                self.signals.extend(data)
                if signal.SIGCHLD in data:
                    self.child_exited = True
        except BlockingIOError:
            pass

    def adopt_running_attempts(self) -> None:
        """Take charge of every attempt the journal says is running: ours
        across an in-place exec, orphans after a fork-mode replacement or a
        master crash. Each gets one full heartbeat_timeout of grace."""
        now = time.monotonic()
        for open_attempt in self.journal.open_attempts():
            self._adopt(open_attempt, now)
        self.read_heartbeats()  # beats and outcomes queued while no master read them

    def _adopt(self, a: OpenAttempt, now: float) -> None:
        if a.pid is None:
            # A fork that failed, and the master died before recording so.
            self.conclude_without_process(a, "lost", "the master stopped before the attempt started")
            return
        parent, alive = procfs.parent_and_sameness(a.pid, a.start_time)
        own = parent == os.getpid()
        if not own and not alive:
            self.conclude_without_process(a, "lost", "the process ended while no master watched it")
            return
        try:
            spec: JobSpec | None = self.spec_for(a.target)
        except AppError:
            spec = None
        # max_runtime counts from the attempt's real start, not from its adoption.
        started = now - max(0.0, time.time() - a.started_at)
        attempt = Attempt(a.attempt_id, a.job_id, a.key, a.target, a.n, a.pid, spec, started, now, now, own_child=own)
        attempt.last_seq = -1  # its numbering started under another master: do not count that as lost beats
        if not own:
            try:
                attempt.pidfd = os.pidfd_open(a.pid)
            except ProcessLookupError:
                self.conclude_without_process(a, "lost", "the process ended while no master watched it")
                return
            self.selector.register(attempt.pidfd, selectors.EVENT_READ, lambda at=attempt: self.adopted_exited(at))
        self.children[a.pid] = attempt
        self.schedule(now + self.config.heartbeat_timeout, "check", attempt)
        event(INFO, "adopt", pid=a.pid, job=a.key, attempt=a.n, how="child" if own else "pidfd")

    def announce_ready(self) -> None:
        self.state = "running"
        now = time.monotonic()
        for attempt in self.children.values():  # grace for adopted children starts now
            attempt.last_beat = attempt.last_progress = max(attempt.last_beat, now)
        self.journal.set_meta(state="running")
        self.handoff.became_ready()
        event(INFO, "ready", generation=self.generation, pid=os.getpid(), app=self.app_spec or "-",
              workers=self.workers, running=len(self.children))
        for hook in self.app.startup_hooks:
            try:
                hook(self.app)
            except Exception:  # noqa: BLE001 - reported, and the master carries on
                log.log.exception("startup_hook_failed hook=%s", getattr(hook, "__qualname__", hook))
        self.run_owed_callbacks()
        self.update_title(force=True)

    # -- the loop -----------------------------------------------------------------

    def run(self) -> int:
        self.open()
        try:
            self.adopt_running_attempts()
            self.announce_ready()
            while self.state != "stopped":
                self.wait_for_events()
                self.handle_signals()
                self.reap_children()
                self.murder_hung_children()
                self.guarded(self.spawn_pending_jobs)
                self.spawner.replenish()
                self.settle_callbacks()
                self.handoff.continue_when_quiet()
                self.handoff.enforce_deadline()
                self.guarded(self.check_finished)
                self.guarded(self.update_title)
                self.watchdog.keep_alive()
                self.watch_storage()
        finally:
            self.close()
        return self.exit_code

    def wait_for_events(self) -> None:
        now = time.monotonic()
        # The next pending-job poll: a backoff ending, or the 1 s fallback for
        # jobs submitted without a wake-up.
        deadline = max(self.next_pending_poll, now) if self.has_free_slot() else now + 1.0
        if self.timers:
            deadline = min(deadline, self.timers[0][0])
        cb_deadline = self.callbacks.next_deadline(self.config.callback_timeout)
        if cb_deadline is not None:
            deadline = min(deadline, cb_deadline)
        deadline = min(deadline, self.watchdog.due, self.outage.next_retry, self.next_state_dir_check)
        if self.maybe_pending and self.has_free_slot():
            deadline = now
        for key, _mask in self.selector.select(max(0.0, deadline - now)):
            key.data()
        if time.monotonic() >= self.next_pending_poll:
            self.maybe_pending = True

    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            handler = _SIGNAL_HANDLERS.get(signum)
            if handler is not None:
                handler(self)

    # -- heartbeats ---------------------------------------------------------------

    def read_heartbeats(self, sock: socket.socket | None = None) -> None:
        sock = sock or self.heartbeat
        now = time.monotonic()
        for _ in range(HEARTBEAT_BATCH):
            try:
                data, ancdata, flags, _addr = sock.recvmsg(protocol.RECV_BUFFER_BYTES, protocol.CREDENTIALS_SPACE)
            except (BlockingIOError, InterruptedError):
                self.drained_at = now
                return
            self.accept_heartbeat(data, ancdata, flags, now)

    def accept_heartbeat(self, data: bytes, ancdata: list[Any], flags: int, now: float) -> None:
        credentials = protocol.sender_credentials(ancdata)
        if credentials is None:
            return self.counters.reject("no_credentials")
        pid, uid = credentials
        if uid != self.uid:
            return self.counters.reject("foreign_uid")
        attempt = self.children.get(pid)
        if attempt is None:
            return self.counters.reject("unknown_pid")
        if flags & socket.MSG_TRUNC or len(data) > protocol.MAX_MESSAGE_BYTES:  # the buffer has one byte to spare
            return self.counters.reject("oversized")
        message = protocol.decode(data)
        if message is None:
            return self.counters.reject("malformed")
        if message.job != attempt.job_id or message.attempt != attempt.n:
            return self.counters.reject("wrong_attempt")
        self.counters.beats += 1
        attempt.last_beat = now
        if message.seq > attempt.last_seq:
            if attempt.last_seq >= 0 and message.seq > attempt.last_seq + 1:
                self.note_gap(attempt, attempt.last_seq + 1, message.seq)
            attempt.last_seq = message.seq
        elif message.seq in attempt.missing:  # late, not lost: beats and the final travel on two sockets
            attempt.missing.discard(message.seq)
            self.counters.beats_missing -= 1
        is_final = message.kind in ("finished", "failed")
        if is_final:
            self.final_seq_arrived(attempt, message.seq)
        if message.progress > attempt.progress:
            attempt.progress = message.progress
            attempt.last_progress = now
        waited = message.body.get("w")
        if type(waited) in (int, float) and waited > self.config.heartbeat_interval:
            self.overloaded_until = now + OVERLOAD_MEMORY
        if is_final and attempt.final is None:
            attempt.final = message.body
        elif log.log.isEnabledFor(DEBUG):
            event(DEBUG, "beat", pid=pid, job=attempt.key, attempt=attempt.n, seq=message.seq,
                  progress=message.progress)

    def note_gap(self, attempt: Attempt, first: int, end: int) -> None:
        """Sequence numbers first..end-1 were skipped: beats the child numbered
        that have not arrived. Counted now; uncounted if one turns up late."""
        self.counters.beats_missing += end - first
        if end - first <= MAX_TRACKED_GAP and len(attempt.missing) <= MAX_TRACKED_GAP:
            attempt.missing.update(range(first, end))

    def final_seq_arrived(self, attempt: Attempt, seq: Any) -> None:
        """The final message numbered `seq` arrived (on the socket or through the
        outbox). Neither it nor the beat numbered just before it is lost: that
        beat was in flight on the heartbeat thread's own socket, and may arrive
        after the outcome or be cut off by the child's exit right after it."""
        if type(seq) is not int:
            return
        for number in (seq, seq - 1):
            if number in attempt.missing:
                attempt.missing.discard(number)
                self.counters.beats_missing -= 1

    # -- timers ---------------------------------------------------------------------

    def schedule(self, when: float, kind: str, attempt: Attempt) -> None:
        heapq.heappush(self.timers, (when, next(self.timer_seq), kind, attempt.pid, attempt.attempt_id))

    def murder_hung_children(self) -> None:
        """Run the deadlines that are due. A beat only moves `last_beat` (O(1));
        the single pending check of each child re-arms itself here (O(log n))."""
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, kind, pid, attempt_id = heapq.heappop(self.timers)
            attempt = self.children.get(pid)
            if attempt is None or attempt.attempt_id != attempt_id:
                continue  # already gone
            if kind == "kill":
                self.signal_attempt(attempt, signal.SIGKILL)
                continue
            if attempt.kill_reason is not None or attempt.final is not None:
                continue  # being killed, or done and about to exit
            reason, due = self.liveness_verdict(attempt, now)
            if reason == "heartbeat_timeout" and now < self.overloaded_until:
                # Children report beats that waited longer than an interval to get
                # into our socket: we are the bottleneck, and their silence may be ours.
                self.counters.count(self.counters.kills, "deferred_overload")
                self.warn_overloaded(now)
                self.schedule(now + BACKLOG_GRACE, "check", attempt)
                continue
            if reason == "heartbeat_timeout" and now - self.drained_at > BACKLOG_GRACE:
                # The master itself is behind: beats may be waiting in the socket
                # (or in blocked senders). Silence is not the child's fault yet.
                self.read_heartbeats()
                if now - self.drained_at > BACKLOG_GRACE:
                    self.counters.count(self.counters.kills, "deferred_backlog")
                    self.schedule(now + BACKLOG_GRACE, "check", attempt)
                    continue
                reason, due = self.liveness_verdict(attempt, now)
            if reason is None:
                self.schedule(due, "check", attempt)
            else:
                self.kill(attempt, reason, now)

    def warn_overloaded(self, now: float) -> None:
        if now - self.overload_warned_at >= 60.0:
            self.overload_warned_at = now
            event(WARNING, "overloaded", children=len(self.children),
                  heartbeat_interval=self.config.heartbeat_interval, max_dgram_qlen=datagram_queue_length(),
                  effect="heartbeat kills wait until beats get through; raise net.unix.max_dgram_qlen "
                         "(sysctl; 512 for hundreds of children) or heartbeat_interval, or lower workers")

    def heartbeat_timeout_of(self, attempt: Attempt) -> float:
        spec = attempt.spec
        return (spec.heartbeat_timeout if spec is not None else None) or self.config.heartbeat_timeout

    def liveness_verdict(self, attempt: Attempt, now: float) -> tuple[str | None, float]:
        """(reason to kill, or None; when to check next)."""
        spec = attempt.spec
        deadlines = [("heartbeat_timeout", attempt.last_beat + self.heartbeat_timeout_of(attempt))]
        if spec is not None and spec.stall_timeout:
            deadlines.append(("stall_timeout", attempt.last_progress + spec.stall_timeout))
        if spec is not None and spec.max_runtime:
            deadlines.append(("max_runtime", attempt.started + spec.max_runtime))
        reason, due = min(deadlines, key=lambda d: d[1])
        return (reason if due <= now else None), due

    def kill(self, attempt: Attempt, reason: str, now: float) -> None:
        ages = {"heartbeat_timeout": now - attempt.last_beat, "stall_timeout": now - attempt.last_progress,
                "max_runtime": now - attempt.started, "operator": 0.0}
        attempt.kill_reason = reason
        attempt.kill_detail = f"{reason}: {ages.get(reason, 0.0):.2f} s"
        self.counters.count(self.counters.kills, reason)
        if reason == "heartbeat_timeout":
            late = now - attempt.last_beat - self.heartbeat_timeout_of(attempt)
            if self.histograms is not None:
                self.histograms.detection_latency.observe(max(0.0, late))
        event(WARNING, "kill", pid=attempt.pid, job=attempt.key, attempt=attempt.n, reason=reason,
              after=f"{ages.get(reason, 0.0):.2f}s")
        self.signal_attempt(attempt, signal.SIGTERM)
        self.signal_attempt(attempt, signal.SIGCONT)  # a stopped process only acts on TERM once continued
        self.schedule(now + self.config.kill_grace, "kill", attempt)

    def signal_attempt(self, attempt: Attempt, signum: int) -> None:
        """Signal the attempt's whole process group (the job and anything it forked)."""
        try:
            if attempt.pidfd is not None:
                # Not our child, so its pid could be reused once it is gone: the
                # pidfd names exactly this process.
                signal.pidfd_send_signal(attempt.pidfd, signum)
            os.killpg(attempt.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            event(WARNING, "signal_failed", pid=attempt.pid, signal=signum, error=exc.strerror)

    # -- exits ------------------------------------------------------------------------

    def reap_children(self) -> None:
        if self.handoff.phase == "forked":
            # The new master watches the children now (through pidfds); only
            # reap the new master itself, to notice if it dies before ready.
            self.reap_new_master()
            return
        if not self.child_exited:
            return  # no SIGCHLD since the last sweep: nothing to reap
        self.child_exited = False
        while True:
            try:
                pid, status, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            attempt = self.children.pop(pid, None)
            if attempt is not None:
                self.conclude(attempt, status, rusage.ru_maxrss)
            elif pid in self.other_children:
                self.other_children.pop(pid)(status)

    def reap_new_master(self) -> None:
        pid = self.handoff.new_master_pid
        if pid is None:
            return
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if reaped:
            self.other_children.pop(pid)(status)

    def leave_children_running(self) -> None:
        """Fork mode, once the new master is ready: exit without touching the
        children; they are orphaned, keep beating, and the new master adopts them."""
        self.stop_mode = "handed_over"
        self.children.clear()
        self.state = "stopped"

    def adopted_exited(self, attempt: Attempt) -> None:
        """The pidfd of an adopted (not our) child became readable: it exited.
        Its exit status went to its real parent; the outcome comes from its
        final message or the outbox."""
        self.read_heartbeats()  # its final message may be queued behind the exit
        if self.children.get(attempt.pid) is attempt:
            del self.children[attempt.pid]
            self.conclude(attempt, None, None)

    def conclude(self, attempt: Attempt, status: int | None, max_rss_kb: int | None) -> None:
        """Record how an attempt ended, exactly once, and decide what comes next."""
        if attempt.pidfd is not None:
            self.selector.unregister(attempt.pidfd)
            os.close(attempt.pidfd)
        try:
            os.killpg(attempt.pid, signal.SIGKILL)  # grandchildren die with the job
        except (ProcessLookupError, PermissionError):
            pass
        final = attempt.final or self.read_outbox(attempt.job_id, attempt.n)
        if final is not None and attempt.missing:
            self.final_seq_arrived(attempt, final.get("seq"))
        result_json = None
        error = None
        reason = None
        if final is not None and final.get("k") == "finished":
            outcome = "finished"
            result_json = json.dumps(final.get("result"))
        elif final is not None:
            outcome, error = "error", str(final.get("error"))
        elif attempt.interrupted:
            outcome, reason = "interrupted", "stopped before it finished"
        elif attempt.kill_reason is not None:
            outcome, reason = "killed", attempt.kill_reason
        elif status is not None:
            outcome, reason = classify_exit(status)
        else:
            outcome, reason = "lost", "exited while adopted; its exit status went to its former parent"
        if error is None and outcome != "finished":
            error = reason if attempt.kill_detail is None else attempt.kill_detail
            if status is not None and outcome == "killed":
                error += f"; ended by {classify_exit(status)[1]}"
        if max_rss_kb:
            error = f"{error} (max RSS {max_rss_kb} KiB)" if error else None
        record = functools.partial(self.record_outcome, attempt.job_id, attempt.key, attempt.target,
                                   attempt.attempt_id, attempt.n, outcome, reason, error, result_json,
                                   max_rss_kb, attempt.pid)
        self.guarded(record, retry=True)
        if self.histograms is not None:
            self.histograms.job_duration.labels(outcome).observe(time.monotonic() - attempt.started)
        self.maybe_pending = True

    def conclude_without_process(self, a: OpenAttempt, outcome: str, reason: str) -> None:
        final = self.read_outbox(a.job_id, a.n)
        if final is not None:
            outcome = "finished" if final.get("k") == "finished" else "error"
            reason = None
        result_json = json.dumps(final.get("result")) if final and outcome == "finished" else None
        error = str(final.get("error")) if final and outcome == "error" else reason
        self.record_outcome(a.job_id, a.key, a.target, a.attempt_id, a.n, outcome, reason, error,
                            result_json, None, a.pid)

    def record_outcome(self, job_id: int, key: str, target: str, attempt_id: int, n: int, outcome: str,
                       reason: str | None, error: str | None, result_json: str | None,
                       max_rss_kb: int | None, pid: int | None) -> None:
        job = self.journal.job_row(job_id)
        assert job is not None
        spec = self.specs.get(target)
        retries = spec.retries if spec is not None and spec.retries is not None else self.config.retries
        failures = job["failures"] + (outcome not in ("finished", "interrupted"))
        not_before = 0.0
        callback: str | None = None
        if outcome == "finished":
            state, callback = "finished", "on_finished"
        elif outcome == "interrupted":
            state = "pending"
        elif failures <= retries and spec is not None:
            state = "pending"
            slot = self.budget.next_slot()
            delay = max(backoff_delay(failures, self.config.backoff_base, self.config.backoff_cap),
                        slot - time.monotonic())
            not_before = time.time() + delay
        else:
            state, callback = "failed", "on_failed"
        recorded, callback_id = self.journal.end_attempt(
            attempt_id, job_id, outcome=outcome, reason=reason, error=error, result_json=result_json,
            max_rss_kb=max_rss_kb, job_state=state, counts_as_failure=outcome not in ("finished", "interrupted"),
            not_before=not_before, callback=callback, attempt_n=n,
        )
        self.remove_outbox(job_id, n)
        if not recorded:
            return  # another master recorded it first (a fork-mode handover)
        self.counters.count(self.counters.attempts, outcome)
        level = INFO if outcome in ("finished", "interrupted") else WARNING
        fields: dict[str, Any] = {"pid": pid, "job": key, "attempt": n, "outcome": outcome}
        if reason:
            fields["reason"] = reason
        if state == "pending" and outcome != "interrupted":
            fields["retry_in"] = f"{max(0.0, not_before - time.time()):.2f}s"
        event(level, {"finished": "complete", "interrupted": "interrupted"}.get(outcome, "attempt_failed")
              if state != "failed" else "job_failed", **fields)
        if outcome == "error" and error and state == "failed":
            log.log.warning("%s", error.rstrip())
        if callback_id is not None and not self.handoff.busy:
            # While a replacement waits for callbacks to end, new ones stay owed
            # in the journal and the new image runs them.
            self.start_callback(callback_id, job_id, n, callback or "")

    def read_outbox(self, job_id: int, n: int) -> dict[str, Any] | None:
        path = self.paths.outbox / f"{job_id}.{n}.json"
        try:
            message = protocol.decode(path.read_bytes())
        except OSError:
            return None
        if message is None or message.job != job_id or message.attempt != n or message.kind not in ("finished", "failed"):
            event(WARNING, "outbox_ignored", path=path, reason="not a valid outcome message")
            return None
        return message.body

    def remove_outbox(self, job_id: int, n: int) -> None:
        try:
            os.unlink(f"{self.paths.outbox}/{job_id}.{n}.json")  # a str: no Path object per job
        except FileNotFoundError:
            pass

    # -- spawning -------------------------------------------------------------------

    def has_free_slot(self) -> bool:
        return self.state == "running" and not self.outage.active and self.handoff.phase in ("idle", "preflight") and len(self.children) < self.workers

    def spec_for(self, target: str) -> JobSpec:
        spec = self.specs.get(target)
        if spec is None:
            spec = self.specs[target] = resolve_target(target)
        return spec

    def spawn_pending_jobs(self) -> None:
        if not self.maybe_pending or not self.has_free_slot():
            return
        self.maybe_pending = False
        self.next_pending_poll = time.monotonic() + 1.0
        jobs = self.journal.pending(self.workers - len(self.children))
        slice_ends = time.monotonic() + SPAWN_SLICE
        for job in jobs:
            self.spawn(job)
            # A fork costs milliseconds (tens on a busy VM) and the socket queues
            # ~10 datagrams: drain it between forks, or a storm of spawns starves
            # the children already running into false kills.
            self.read_heartbeats()
            if time.monotonic() >= slice_ends:
                break  # the rest on the next turn, after reaping, timers and control requests
        if len(jobs) and self.has_free_slot():
            self.maybe_pending = True  # there may be more behind them
        next_at = self.journal.next_not_before()
        if next_at is not None and next_at > time.time():
            self.next_pending_poll = min(self.next_pending_poll, time.monotonic() + next_at - time.time())

    def spawn(self, job: Job) -> None:
        try:
            spec = self.spec_for(job.target)
            decode_params(job.params)  # bad JSON fails the job here, not in a child
        except AppError as exc:
            event(ERROR, "job_failed", job=job.key, outcome="error", reason="cannot start")
            log.log.error("%s", exc)
            callback_id = self.journal.fail_without_attempt(job.id, str(exc))
            if callback_id is not None:
                self.start_callback(callback_id, job.id, 0, "on_failed")
            return
        n = job.attempts + 1
        try:
            waiting = self.spawner.take()
        except OSError as exc:  # out of processes or memory: the attempt did not start
            event(ERROR, "fork_failed", job=job.key, attempt=n, error=exc.strerror)
            attempt_id = self.journal.begin_attempt(job, self.generation, None, None)
            self.record_outcome(job.id, job.key, job.target, attempt_id, n, "lost", f"fork failed: {exc.strerror}",
                                f"fork failed: {exc.strerror}", None, None, None)
            return
        pid = waiting.pid
        try:
            attempt_id = self.journal.begin_attempt(job, self.generation, pid, waiting.start_time)
        except STORAGE_ERRORS as exc:
            # The job stays pending in the journal; the child, given no order,
            # exits without running it and is reaped as a stranger.
            os.close(waiting.order_fd)
            self.outage.failed(exc, "begin_attempt")
            return
        delivered = waiting.send(child.order(job.id, job.key, n, job.target, job.params,
                                             self.config.heartbeat_interval, self.config.outcome_delivery_timeout))
        now = time.monotonic()
        attempt = Attempt(attempt_id, job.id, job.key, job.target, n, pid, spec, now, now, now)
        if not delivered:  # the child died waiting and never saw its job: not the job's failure
            attempt.interrupted = True
            attempt.kill_detail = "its child died before it received the job"
        self.children[pid] = attempt
        self.schedule(self.liveness_verdict(attempt, now)[1], "check", attempt)
        self.counters.spawned += 1
        event(INFO, "spawn", pid=pid, job=job.key, attempt=n, target=job.target)

    # -- callbacks ------------------------------------------------------------------

    def start_callback(self, callback_id: int, job_id: int, n: int, kind: str) -> None:
        row = self.journal.job_row(job_id)
        assert row is not None
        info = JobInfo(job_id, row["key"], row["target"], json.loads(row["params"]), n, row["outcome"], row["error"])
        functions: list[Callable[..., Any]]
        if kind == "on_finished":
            functions = list(self.app.finished_callbacks)
            argument = json.loads(row["result"]) if row["result"] is not None else None
        else:
            functions = list(self.app.failed_callbacks)
            argument = row["error"]
        if not functions:  # nothing registered: done, in one transaction
            self.journal.callback_done(callback_id, None)
            return
        self.journal.callback_started(callback_id)
        self.callbacks.start(callback_id, row["key"], kind, functions, info, argument)

    def run_owed_callbacks(self) -> None:
        """Callbacks recorded as owed by an earlier master and never done: run
        them now (at least once across a crash; they get the job id and attempt
        to de-duplicate)."""
        for callback_id, job_id, n, kind in self.journal.owed_callbacks():
            if callback_id not in self.callbacks.running:
                self.start_callback(callback_id, job_id, n, kind)

    def settle_callbacks(self) -> None:
        now = time.monotonic()
        for running, error in self.callbacks.finished():
            if self.histograms is not None:
                self.histograms.callback_duration.observe(now - running.started)
            if error:
                self.counters.callback_errors += 1
                event(ERROR, "callback_error", job=running.job_key, callback=running.kind)
                log.log.error("%s", error.rstrip())
            self.guarded(functools.partial(self.journal.callback_done, running.callback_id, error), retry=True)
        for running in self.callbacks.overdue(self.config.callback_timeout, now):
            self.counters.callback_errors += 1
            event(ERROR, "callback_timeout", job=running.job_key, callback=running.kind,
                  limit=f"{self.config.callback_timeout}s")
            self.guarded(functools.partial(self.journal.callback_done, running.callback_id,
                                           f"timed out after {self.config.callback_timeout} s"), retry=True)

    # -- storage faults ---------------------------------------------------------------

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

    def watch_storage(self) -> None:
        now = time.monotonic()
        if self.outage.active and self.outage.retry_if_due(self.journal.probe_write):
            self.maybe_pending = True
            self.guarded(self.run_owed_callbacks)  # any that could not be started meanwhile
        if now < self.next_state_dir_check:
            return
        self.next_state_dir_check = now + 1.0
        if file_identity(self.paths.journal) != self.journal_identity:
            self.rebuild_state_dir()

    def rebuild_state_dir(self) -> None:
        """The journal file vanished or was replaced under us: rebuild the state
        directory from the open journal, and rebind the sockets, lock and pidfile."""
        if not self.outage.active:  # else said already, and retried every second
            event(ERROR, "state_dir_lost", path=self.paths.root,
                  effect="rebuilding it from the open journal; running children are kept")
        try:
            self.paths.ensure()
            restore_journal(self.journal.db, self.paths.journal)
            self.journal.close()
            self.journal = self.app.journal = Journal(self.paths.journal)
            self.journal_identity = file_identity(self.paths.journal)
            self.pidfile.rebuild()
            old_heartbeat = self.heartbeat
            self.heartbeat = bind_heartbeat(self.paths.heartbeat_socket)
            # Children connected to the old socket keep beating there: read both.
            self.selector.register(self.heartbeat, selectors.EVENT_READ, self.read_heartbeats)
            self.selector.modify(old_heartbeat, selectors.EVENT_READ,
                                 lambda: self.read_heartbeats(old_heartbeat))
            self.retired_heartbeats.append(old_heartbeat)
            self.control.rebind(control_socket.bind(self.paths.control_socket))
        except (*STORAGE_ERRORS, AlreadyRunning, JournalError) as exc:
            self.outage.failed(exc, "rebuild_state_dir")
            return
        event(WARNING, "state_dir_rebuilt", path=self.paths.root, running=len(self.children))

    # -- ending -----------------------------------------------------------------------

    def check_finished(self) -> None:
        if self.children or self.callbacks.running:
            return
        if self.state in ("draining", "stopping"):
            self.state = "stopped"
        elif self.state == "running" and self.config.exit_when_done and (not self.maybe_pending or self.workers == 0):
            # (With no slots, pending jobs are never looked for: ask the journal.)
            counts = self.journal.counts()
            if counts["pending"] == 0 and counts["running"] == 0:
                event(INFO, "monitoring_complete", finished=counts["finished"], failed=counts["failed"], running=0)
                self.exit_code = 1 if counts["failed"] else 0
                self.state = "stopped"

    def begin_stop(self, mode: str) -> None:
        self.spawner.discard()
        if self.state in ("stopping",) and mode == "term":
            event(WARNING, "stop_now", running=len(self.children))
            for attempt in list(self.children.values()):
                self.signal_attempt(attempt, signal.SIGKILL)
            return
        if mode == "leave":
            event(INFO, "stop", mode="leave-running", running=len(self.children))
            self.stop_mode = "leave"
            self.children.clear()  # they keep running; the next master adopts them
            self.state = "stopped"
            return
        if mode == "drain":
            event(INFO, "drain", running=len(self.children))
            self.state = "draining"
            return
        event(INFO, "stop", mode="term", running=len(self.children))
        self.state = "stopping"
        now = time.monotonic()
        for attempt in self.children.values():
            attempt.interrupted = True
            self.signal_attempt(attempt, signal.SIGTERM)
            self.signal_attempt(attempt, signal.SIGCONT)
            self.schedule(now + self.config.kill_grace, "kill", attempt)

    def close(self) -> None:
        self.spawner.discard()
        self.callbacks.wait_all(self.config.callback_timeout)
        self.settle_callbacks()
        self.callbacks.shutdown()
        self.control.close()
        if self.stop_mode == "handed_over":
            # The sockets, the pidfile and the journal's meta are the new master's now.
            handoff.oldbin(self).unlink(missing_ok=True)
            self.journal.record_event("handed_over", self.generation, os.getpid(), None)
        else:
            self.journal.set_meta(state="stopped")
            self.journal.record_event("master_stop", self.generation, os.getpid(), self.stop_mode)
            for path in (self.paths.heartbeat_socket, self.paths.control_socket):
                path.unlink(missing_ok=True)
            systemd.notify("STOPPING=1")
        self.pidfile.release()
        self.journal.close()
        event(INFO, "exit", pid=os.getpid(), code=self.exit_code)

    def update_title(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.title_due:
            return
        self.title_due = now + 0.5
        self.counters.jobs = self.journal.counts()
        pending = self.counters.jobs["pending"]
        app = self.app.name or self.app_spec or "-"
        setproctitle(f"phoenix: master gen {self.generation} [{app}] {len(self.children)} running {pending} pending")
        systemd.notify(f"STATUS=gen {self.generation}: {len(self.children)} running, {pending} pending")

    # -- control requests -----------------------------------------------------------

    def control_request(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("cmd")
        if command == "status":
            return {"ok": True, **self.live_status()}
        if command == "wake":
            self.maybe_pending = True
            return {"ok": True}
        if command == "stop":
            mode = request.get("mode", "term")
            if mode not in ("term", "drain", "leave"):
                return {"ok": False, "error": f"unknown stop mode {mode!r}"}
            self.begin_stop(mode)
            return {"ok": True}
        if command == "reload":
            return self.handoff.request_reload()
        return {"ok": False, "error": f"unknown command {command!r}; known: status, wake, stop, reload"}

    def live_status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "master": {
                "pid": os.getpid(),
                "generation": self.generation,
                "state": "draining" if self.state == "draining" else "running",
                "started_at": self.started_at,
                "uptime": round(time.time() - self.started_at, 3),
                "workers": self.workers,
                "slots_used": len(self.children),
                "spare_pid": self.spawner.spare.pid if self.spawner.spare else None,
                "app": self.app_spec,
                "beats": self.counters.beats,
                "beats_missing": self.counters.beats_missing,
                "rejected": self.counters.rejected,
                "reload": self.handoff.last_result,
            },
            "running": {
                str(a.job_id): {
                    "pid": a.pid,
                    "attempt": a.n,
                    "age": round(now - a.started, 3),
                    "last_beat_age": round(now - a.last_beat, 3),
                    "progress": a.progress,
                    "rss": procfs.rss_bytes(a.pid),
                    "adopted": not a.own_child,
                }
                for a in self.children.values()
            },
        }


def _name(operation: Callable[..., Any]) -> str:
    inner = getattr(operation, "func", operation)
    return getattr(inner, "__name__", "journal write")


def _record_only(signum: int, frame: Any) -> None:
    """The wake-up fd carries the signal number to the loop; nothing else to do here."""


def _raise_fd_limit() -> None:
    # Adopted children each hold a pidfd; 1,000 of them outgrow the usual soft limit of 1,024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _on_hup(m: Master) -> None:
    try:
        new = m.reload_config()
    except Exception as exc:  # noqa: BLE001 - a bad edit must not take the master down
        event(ERROR, "reload_config_failed", error=str(exc))
        return
    changed = {k: (getattr(m.config, k), getattr(new, k)) for k in vars(new) if getattr(m.config, k) != getattr(new, k)}
    m.config = new
    m.workers = new.workers
    m.budget = RestartBudget(new.restart_intensity, new.restart_period)
    m.maybe_pending = True
    event(INFO, "config_reloaded", changed=" ".join(f"{k}:{a}->{b}" for k, (a, b) in changed.items()) or "nothing")


def _on_ttin(m: Master) -> None:
    m.workers += 1
    m.maybe_pending = True
    event(INFO, "workers", workers=m.workers)


def _on_ttou(m: Master) -> None:
    m.workers = max(0, m.workers - 1)
    event(INFO, "workers", workers=m.workers)


def _on_usr1(m: Master) -> None:
    m.spawner.discard()  # it holds the old log file; the next one gets the new
    log.reopen()
    event(INFO, "logs_reopened")


_SIGNAL_HANDLERS: dict[int, Callable[[Master], None]] = {
    signal.SIGTERM: lambda m: m.begin_stop("term"),
    signal.SIGINT: lambda m: m.begin_stop("term"),
    signal.SIGQUIT: lambda m: m.begin_stop("drain"),
    signal.SIGHUP: _on_hup,
    signal.SIGTTIN: _on_ttin,
    signal.SIGTTOU: _on_ttou,
    signal.SIGUSR1: _on_usr1,
    signal.SIGUSR2: lambda m: m.handoff.begin(),
    signal.SIGCHLD: lambda m: None,  # _read_signals marks child_exited; reap_children reaps
}


def run_master(app: App, app_spec: str | None, flags: dict[str, Any], config_file: str | None = None) -> int:
    """Build the configuration, set up logging, and run a master until it stops."""
    from phoenix import config as config_module

    def load() -> Config:
        return config_module.load(app.settings, config_file, flags)

    config = load()
    log.setup(config.log_level, config.log_format, config.log_file)
    gc.freeze()  # objects made so far stay out of the collector: forked children share their pages
    return Master(app, app_spec, config, load, config_file).run()
