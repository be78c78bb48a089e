"""The reaper and adopter: takes charge of the attempts the journal says are
running (ours across an exec, orphans after a fork-mode handover or a master
crash), and notices every attempt's end, handing each to the outcome recorder
once: from the fork server's exit reports for the children it forked, by
`wait4` for our own children (forked by the master, or the server's children
reparented to us when it ended), and by pidfd for adopted ones."""

from __future__ import annotations

import logging
import os
import selectors
import time
from typing import Callable, Protocol

from phoenix import clock, log, procfs
from phoenix.app import JobSpec
from phoenix.attempts import Attempt
from phoenix.config import Config
from phoenix.journal import OpenAttempt
from phoenix.outcomes import classify_exit
from phoenix.recorder import LOST_UNWATCHED, OutcomeRecorder
from phoenix.spawner import Spawner
from phoenix.states import TimerKind
from phoenix.store import Store
from phoenix.timers import TimerHeap


class ReaperHost(Protocol):
    journal: Store
    config: Config
    children: dict[int, Attempt]
    timers: TimerHeap
    selector: selectors.BaseSelector
    subprocesses: dict[int, Callable[[int], None]]  # pid -> on_exit(status): the preflight, the spare
    recorder: OutcomeRecorder
    spawner: Spawner

    def known_spec(self, target: str) -> JobSpec | None: ...
    def read_heartbeats(self) -> None: ...
    def fork_successor(self) -> int | None: ...  # fork mode: the new master's pid while it starts


class Reaper:
    def __init__(self, host: ReaperHost) -> None:
        self.host = host
        self.child_exited = True  # SIGCHLD seen since the last sweep (True: reconcile at start)

    def adopt_running_attempts(self) -> None:
        """Each attempt the journal says runs gets one full heartbeat_timeout
        of grace. The app is loaded by now (or known missing): an attempt
        found lost is judged under its job's own policy."""
        now = time.monotonic()
        for open_attempt in self.host.journal.open_attempts():
            self._adopt(open_attempt, now)
        self.host.read_heartbeats()  # beats and outcomes queued while no master read them

    def _adopt(self, a: OpenAttempt, now: float) -> None:
        h = self.host
        if a.pid is None:
            # A fork that failed, and the master died before recording so.
            h.recorder.conclude_without_process(a, "the master stopped before the attempt started")
            return
        parent, alive = procfs.parent_and_sameness(a.pid, a.start_time)
        own = parent == os.getpid()
        if not own and not alive:
            h.recorder.conclude_without_process(a, LOST_UNWATCHED)
            return
        # max_runtime counts from the attempt's real start, not from its adoption,
        # on a clock that a wall-clock step does not move.
        started = now - clock.age(a.started_boot, a.start_time)
        attempt = Attempt(a.attempt_id, a.job_id, a.key, a.target, a.n, a.pid, h.known_spec(a.target), started,
                          now, now, own_child=own)
        attempt.last_seq = -1  # its numbering started under another master: do not count that as lost beats
        # Acknowledged by an earlier master (or image): the child may still be exiting.
        attempt.final = h.recorder.held_final(a)
        attempt.final_held = attempt.final is not None
        if not own:
            try:
                attempt.pidfd = os.pidfd_open(a.pid)
            except ProcessLookupError:
                h.recorder.conclude_without_process(a, LOST_UNWATCHED)
                return
            h.selector.register(attempt.pidfd, selectors.EVENT_READ, lambda at=attempt: self.adopted_exited(at))
        h.children[a.pid] = attempt
        h.timers.push(now + h.config.heartbeat_timeout, TimerKind.CHECK, attempt.pid, attempt.attempt_id)
        log.event(logging.INFO, "adopt", pid=a.pid, job=a.key, attempt=a.n, how="child" if own else "pidfd")

    def reap(self) -> None:
        h = self.host
        successor = h.fork_successor()
        if successor is not None:
            # The new master watches the children now (through pidfds); only
            # reap the new master itself, to notice if it dies before ready.
            self._reap_successor(successor)
            return
        if self.child_exited:  # else no SIGCHLD since the last sweep: nothing to wait for
            self.child_exited = False
            while True:
                try:
                    pid, status, rusage = os.wait4(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                self._exited(pid, status, rusage.ru_maxrss)
        self.take_server_reports()
        if h.spawner.server_lost:
            h.spawner.server_lost = False
            self._conclude_unreported()

    def take_server_reports(self) -> None:
        """The exits the fork server reported (its children are not ours to wait for)."""
        reports, self.host.spawner.exited = self.host.spawner.exited, []
        for pid, status, max_rss_kb in reports:
            self._exited(pid, status, max_rss_kb)

    def _exited(self, pid: int, status: int, max_rss_kb: int) -> None:
        h = self.host
        attempt = h.children.pop(pid, None)
        if attempt is not None:
            self.conclude(attempt, status, max_rss_kb)
        elif pid in h.subprocesses:
            h.subprocesses.pop(pid)(status)
        else:  # an orphan handed to us as subreaper (a job's daemon, ended with its attempt)
            log.event(logging.DEBUG, "reaped_orphan", pid=pid, how=classify_exit(status)[1])

    def _conclude_unreported(self) -> None:
        """After a fork server died: its children still running became ours
        (reparented before it could be reaped); one that is not ours has
        ended, reaped by the server, whose report died with it. Its outcome
        comes from its final message or the outbox, as an adopted child's."""
        me = os.getpid()
        self.host.read_heartbeats()
        for attempt in list(self.host.children.values()):
            if attempt.pidfd is None and procfs.parent_pid(attempt.pid) != me:
                del self.host.children[attempt.pid]
                self.conclude(attempt, None, None)

    def _reap_successor(self, pid: int) -> None:
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if reaped:
            self.host.subprocesses.pop(pid)(status)

    def adopted_exited(self, attempt: Attempt) -> None:
        """The pidfd of an adopted (not our) child became readable: it exited.
        Its exit status went to its real parent; the outcome comes from its
        final message or the outbox."""
        self.host.read_heartbeats()  # its final message may be queued behind the exit
        if self.host.children.get(attempt.pid) is attempt:
            del self.host.children[attempt.pid]
            self.conclude(attempt, None, None)

    def conclude(self, attempt: Attempt, status: int | None, max_rss_kb: int | None) -> None:
        if attempt.pidfd is not None:
            self.host.selector.unregister(attempt.pidfd)
            os.close(attempt.pidfd)
        self.host.recorder.conclude(attempt, status, max_rss_kb)
