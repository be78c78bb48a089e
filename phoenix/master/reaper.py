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

from phoenix import log
from phoenix.app import JobSpec
from phoenix.config import Config
from phoenix.linux import clock, procfs
from phoenix.master.attempts import Attempt
from phoenix.master.hangs import HangKiller
from phoenix.master.recorder import LOST_UNWATCHED, OutcomeRecorder
from phoenix.master.spawner import Spawner
from phoenix.master.timers import TimerHeap
from phoenix.rules.outcomes import classify_exit
from phoenix.rules.states import KillReason, TimerKind
from phoenix.store.base import OpenAttempt, Store


class ReaperHost(Protocol):
    journal: Store
    config: Config
    children: dict[int, Attempt]
    timers: TimerHeap
    selector: selectors.BaseSelector
    subprocesses: dict[int, Callable[[int], None]]  # pid -> on_exit(status): the preflight, the spare
    recorder: OutcomeRecorder
    spawner: Spawner
    hangs: HangKiller

    def known_spec(self, target: str) -> JobSpec | None: ...
    def read_heartbeats(self) -> None: ...
    def fork_successor(self) -> int | None: ...  # fork mode: the new master's pid while it starts


class Reaper:
    def __init__(self, host: ReaperHost) -> None:
        self.host = host
        self.child_exited = True  # SIGCHLD seen since the last sweep (True: reconcile at start)
        # pid -> recorded start time: adopted children not yet watched by pidfd (out of descriptors at adoption)
        self.unwatched: dict[int, int | None] = {}

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
        try:
            parent, alive = procfs.parent_and_sameness(a.pid, a.start_time)
        except OSError as exc:  # no descriptor or memory to read /proc: watched once it can be
            parent, alive = None, True
            self._unwatched(a.pid, a.start_time, exc)
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
        if not own and a.pid not in self.unwatched:
            try:
                self._watch(attempt, os.pidfd_open(a.pid))
            except ProcessLookupError:
                h.recorder.conclude_without_process(a, LOST_UNWATCHED)
                return
            except OSError as exc:  # out of descriptors or memory: adopted all the same, watched once it can be
                self._unwatched(a.pid, a.start_time, exc)
        h.children[a.pid] = attempt
        h.timers.push(now + h.config.heartbeat_timeout, TimerKind.CHECK, attempt.pid, attempt.attempt_id)
        log.event(logging.INFO, "adopt", pid=a.pid, job=a.key, attempt=a.n, how="child" if own else "pidfd")
        if a.cancel_requested:  # the cancel its former master began
            if attempt.final is None:
                h.hangs.cancel(attempt, now)  # TERM again, KILL after kill_grace
            else:
                attempt.kill_reason = KillReason.CANCELLED  # exiting already: an error it reported is the cancel's

    def _watch(self, attempt: Attempt, pidfd: int) -> None:
        attempt.pidfd = pidfd
        self.host.selector.register(pidfd, selectors.EVENT_READ, lambda: self.adopted_exited(attempt))

    def _unwatched(self, pid: int, start_time: int | None, exc: OSError) -> None:
        if not self.unwatched:
            log.event(logging.ERROR, "adopt_unwatched", pid=pid, error=exc.strerror or str(exc),
                      effect="adopted all the same; its end is noticed once the master can open a pidfd (tried every "
                             "turn)")
        self.unwatched[pid] = start_time

    def watch_unwatched(self) -> None:
        """Adopted children the master could not open a pidfd (or read /proc)
        for, for want of descriptors or memory: try again. One found gone (or
        its pid now another process's) ended meanwhile."""
        h = self.host
        for pid, start_time in list(self.unwatched.items()):
            attempt = h.children.get(pid)
            if attempt is None:  # concluded another way meanwhile (reaped as our own child)
                del self.unwatched[pid]
                continue
            pidfd = None
            try:
                parent, alive = procfs.parent_and_sameness(pid, start_time)
                if parent != os.getpid() and alive:
                    pidfd = os.pidfd_open(pid)
                    # Opened after the check: the pid must still name the same process.
                    alive = procfs.is_same_process(pid, start_time)
            except ProcessLookupError:
                parent, alive = None, False
            except OSError:
                if pidfd is not None:
                    os.close(pidfd)
                return  # still short: the next turn tries again
            del self.unwatched[pid]
            if parent == os.getpid():
                attempt.own_child = True  # our own child after all: wait4 reports its end
            elif pidfd is not None and alive:
                self._watch(attempt, pidfd)
            else:
                if pidfd is not None:
                    os.close(pidfd)
                del h.children[pid]
                self.conclude(attempt, None, None)
        if not self.unwatched:
            log.event(logging.WARNING, "adopt_watched", effect="every adopted child is watched through its pidfd")

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
        if h.recorder.unread:
            h.recorder.record_unread()
        if self.unwatched:
            self.watch_unwatched()
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
            if attempt.pidfd is not None:
                continue  # adopted: its pidfd tells its end
            try:
                parent = procfs.parent_pid(attempt.pid)
            except OSError:  # out of descriptors or memory: look again at the next sweep
                self.host.spawner.server_lost = True
                continue
            if parent != me:
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
