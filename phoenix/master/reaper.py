"""The reaper and adopter: takes charge of the attempts the journal says are
running (ours across an exec, orphans after a fork-mode handover or a master
crash), and notices every attempt's end, handing each to the outcome recorder
once: from the fork server's exit reports for the children it forked, by
`wait4` for our own children (forked by the master, or the server's children
reparented to us when it ended), and by pidfd for adopted ones."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Protocol

from phoenix import log
from phoenix.linux import procfs
from phoenix.linux.clock import age
from phoenix.linux.untrusted import is_number, visible
from phoenix.master.attempts import Attempt, AttemptTable
from phoenix.master.loop import Loop
from phoenix.master.recorder import LOST_UNWATCHED
from phoenix.master.specs import JobSpecs
from phoenix.rules.outcomes import classify_exit
from phoenix.rules.states import KillReason
from phoenix.store.base import OpenAttempt, Store


class Ends(Protocol):
    """What the reaper hands an attempt's end to (recorder.OutcomeRecorder)."""

    unread: list[Callable[[], None]]  # ends waiting for an outbox that could not be read

    def conclude(self, attempt: Attempt, status: int | None, max_rss_kb: int | None) -> None: ...
    def conclude_without_process(self, a: OpenAttempt, reason: str) -> None: ...
    def held_final(self, a: OpenAttempt) -> dict[str, Any] | None: ...
    def record_unread(self) -> None: ...


class ServerReports(Protocol):
    """The exits the fork server reports for the children it forked (spawner.Spawner)."""

    def take_reports(self) -> list[tuple[int, int, int]]: ...
    def take_server_lost(self) -> bool: ...


class Watcher(Protocol):
    """The watchers of an attempt (memory.Watchers: the hang killer, the memory limit), for an adopted or ended one."""

    def watch_adopted(self, attempt: Attempt, now: float) -> None: ...
    def cancel(self, attempt: Attempt, now: float) -> None: ...
    def resume_kill(self, attempt: Attempt, reason: KillReason, now: float) -> None: ...
    def ended(self, attempt: Attempt, status: int | None) -> None: ...


class Reaper:
    """The one writer of an attempt's pidfd and own_child; it removes ended attempts from the table."""

    def __init__(self, journal: Callable[[], Store], attempts: AttemptTable, loop: Loop, specs: JobSpecs,
                 recorder: Ends, server: ServerReports, hangs: Watcher, read_heartbeats: Callable[[], None],
                 fork_successor: Callable[[], int | None]) -> None:
        """`read_heartbeats`: read every beat and final waiting (an exit may
        be noticed before the final sent just ahead of it). `fork_successor`:
        fork mode, the new master's pid while it starts (it watches the
        children then), else None."""
        self.journal = journal
        self.attempts = attempts
        self.loop = loop
        self.clock = loop.clock
        self.specs = specs
        self.recorder = recorder
        self.server = server
        self.hangs = hangs
        self.read_heartbeats = read_heartbeats
        self.fork_successor = fork_successor
        self.look_for_unreported = False  # a look after a fork server died could not read /proc: again
        self.child_exited = True  # SIGCHLD seen since the last sweep (True: reconcile at start)
        # pid -> recorded start time: adopted children not yet watched by pidfd (out of descriptors at adoption)
        self.unwatched: dict[int, int | None] = {}

    def child_may_have_exited(self) -> None:
        """A SIGCHLD, or a child closed its connection (most likely exiting):
        sweep on this turn (its exit status still comes from wait4 or its pidfd)."""
        self.child_exited = True

    def adopt_running_attempts(self) -> None:
        """Each attempt the journal says runs gets one full heartbeat_timeout
        of grace. The app is loaded by now (or known missing): an attempt
        found lost is judged under its job's own policy."""
        now = self.clock.monotonic()
        for open_attempt in self.journal().open_attempts():
            self._adopt(open_attempt, now)
        self.read_heartbeats()  # beats and outcomes queued while no master read them

    def _adopt(self, a: OpenAttempt, now: float) -> None:
        pid_damaged = a.pid is not None and not is_number(a.pid, whole=True)
        if pid_damaged or (a.start_time is not None and not is_number(a.start_time, whole=True)):
            identified = self._identify_damaged(a)
            if identified is None:
                return
            a = identified
        if a.pid is None:
            # A fork that failed, and the master died before recording so.
            self.recorder.conclude_without_process(a, "the master stopped before the attempt started")
            return
        try:
            parent, alive = procfs.parent_and_sameness(a.pid, a.start_time)
        except OSError as exc:  # no descriptor or memory to read /proc: watched once it can be
            parent, alive = None, True
            self._unwatched(a.pid, a.start_time, exc)
        own = parent == os.getpid()
        if not own and not alive:
            self.recorder.conclude_without_process(a, LOST_UNWATCHED)
            return
        # max_runtime counts from the attempt's real start, not from its adoption,
        # on a clock that a wall-clock step does not move.
        started = now - age(*self._start_times(a), self.clock.since_boot())
        # Its numbering started under another master (last_seq -1): do not count that as lost beats. A
        # final acknowledged by an earlier master (or image) is held: the child may still be exiting.
        final = self.recorder.held_final(a)
        attempt = Attempt(a.attempt_id, a.job_id, a.key, a.target, a.n, a.pid, self.specs.known_spec(a.target),
                          started, now, now, own_child=own, last_seq=-1, final=final, final_held=final is not None,
                          # Exiting already after a kill or cancel its former master began: an error it
                          # reported is that kill's or cancel's.
                          kill_reason=a.ending if final is not None else None)
        if not own and a.pid not in self.unwatched:
            try:
                self._watch(attempt, os.pidfd_open(a.pid))
            except ProcessLookupError:
                self.recorder.conclude_without_process(a, LOST_UNWATCHED)
                return
            except OSError as exc:  # out of descriptors or memory: adopted all the same, watched once it can be
                self._unwatched(a.pid, a.start_time, exc)
        self.attempts.add(attempt)
        self.hangs.watch_adopted(attempt, now)
        log.event(logging.INFO, "adopt", pid=a.pid, job=a.key, attempt=a.n, how="child" if own else "pidfd")
        if a.cancel_requested and attempt.final is None:  # the cancel its former master began
            self.hangs.cancel(attempt, now)  # TERM again, KILL after kill_grace
        elif a.ending is not None and attempt.final is None:  # the kill its former master began
            self.hangs.resume_kill(attempt, a.ending, now)

    def _identify_damaged(self, a: OpenAttempt) -> OpenAttempt | None:
        """An open attempt whose pid or process start time another tool
        damaged (bytes, text): taken as dead, its job ran twice at once. Its
        process is the one live process that leads its own group and carries
        the attempt's title and whichever of the two is intact; adopted, said
        in one line. None found: concluded lost. Several, or one that does
        not match: left running, not run again, said in one line."""
        pid_kept, start_kept = is_number(a.pid, whole=True), is_number(a.start_time, whole=True)
        damaged = "start_time" if pid_kept else "pid"
        value = a.pid if damaged == "pid" else a.start_time
        title = f"phoenix: job {visible(a.key)} attempt {a.n}"
        titled = procfs.titled_group_leaders(title)
        matches = [(pid, start) for pid, start in titled
                   if (not pid_kept or pid == a.pid) and (not start_kept or start == a.start_time)]
        if len(matches) == 1:
            pid, start = matches[0]
            log.event(logging.WARNING, "attempt_damaged", job=a.key, attempt=a.n, column=damaged,
                      value=repr(value)[:100], effect=f"its process found by its title and process group: pid={pid}")
            return dataclasses.replace(a, pid=pid, start_time=start)
        if not titled:  # no process runs it: it ended while no master watched it
            log.event(logging.WARNING, "attempt_damaged", job=a.key, attempt=a.n, column=damaged,
                      value=repr(value)[:100], effect="no process carries its title: recorded lost")
            self.recorder.conclude_without_process(a, LOST_UNWATCHED)
            return None
        log.event(logging.ERROR, "attempt_damaged", job=a.key, attempt=a.n, column=damaged, value=repr(value)[:100],
                  pids=",".join(str(pid) for pid, _ in titled),
                  effect=f"not adopted and not run again while a process titled {title!r} may run it: end it "
                         "(kill PID), then restart the master, which records the attempt lost")
        return None

    @staticmethod
    def _start_times(a: OpenAttempt) -> tuple[float | None, int | None]:
        """The attempt's stored start (boot clock) and its process's start
        ticks, for its age; one another tool damaged (bytes, text: SQLite
        keeps what it is given) is not counted from, said in one line: the
        attempt is then aged from what is left, as in an older journal."""
        kept: list[Any] = []
        for column, value in (("started_boot", a.started_boot), ("start_time", a.start_time)):
            if value is not None and not is_number(value):
                log.event(logging.WARNING, "attempt_damaged", job=a.key, attempt=a.n, column=column,
                          value=repr(value)[:100], effect="not counted from: its max_runtime counts from its "
                                                          "adoption or its process's start")
                value = None
            kept.append(value)
        return kept[0], kept[1]

    def _watch(self, attempt: Attempt, pidfd: int) -> None:
        attempt.pidfd = pidfd
        self.loop.watch(pidfd, lambda: self.adopted_exited(attempt))

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
        for pid, start_time in list(self.unwatched.items()):
            attempt = self.attempts.get(pid)
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
                self.attempts.remove(pid)
                self.conclude(attempt, None, None)
        if not self.unwatched:
            log.event(logging.WARNING, "adopt_watched", effect="every adopted child is watched through its pidfd")

    def reap(self) -> None:
        successor = self.fork_successor()
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
        if self.recorder.unread:
            self.recorder.record_unread()
        if self.unwatched:
            self.watch_unwatched()
        if self.server.take_server_lost() or self.look_for_unreported:
            self.look_for_unreported = False
            self._conclude_unreported()

    def take_server_reports(self) -> None:
        """The exits the fork server reported (its children are not ours to wait for)."""
        for pid, status, max_rss_kb in self.server.take_reports():
            self._exited(pid, status, max_rss_kb)

    def _exited(self, pid: int, status: int, max_rss_kb: int) -> None:
        attempt = self.attempts.remove(pid)
        if attempt is not None:
            self.conclude(attempt, status, max_rss_kb)
        elif not self.loop.subprocess_exited(pid, status):
            # An orphan handed to us as subreaper (a job's daemon, ended with its attempt).
            log.event(logging.DEBUG, "reaped_orphan", pid=pid, how=classify_exit(status)[1])

    def _conclude_unreported(self) -> None:
        """After a fork server died: its children still running became ours
        (reparented before it could be reaped); one that is not ours has
        ended, reaped by the server, whose report died with it. Its outcome
        comes from its final message or the outbox, as an adopted child's."""
        me = os.getpid()
        self.read_heartbeats()
        for attempt in list(self.attempts.values()):
            if attempt.pidfd is not None:
                continue  # adopted: its pidfd tells its end
            try:
                parent = procfs.parent_pid(attempt.pid)
            except OSError:  # out of descriptors or memory: look again at the next sweep
                self.look_for_unreported = True
                continue
            if parent != me:
                self.attempts.remove(attempt.pid)
                self.conclude(attempt, None, None)

    def _reap_successor(self, pid: int) -> None:
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if reaped:
            self.loop.subprocess_exited(pid, status)

    def adopted_exited(self, attempt: Attempt) -> None:
        """The pidfd of an adopted (not our) child became readable: it exited.
        Its exit status went to its real parent; the outcome comes from its
        final message or the outbox."""
        self.read_heartbeats()  # its final message may be queued behind the exit
        if self.attempts.get(attempt.pid) is attempt:
            self.attempts.remove(attempt.pid)
            self.conclude(attempt, None, None)

    def conclude(self, attempt: Attempt, status: int | None, max_rss_kb: int | None) -> None:
        if attempt.pidfd is not None:
            self.loop.unwatch(attempt.pidfd)
            os.close(attempt.pidfd)
        self.hangs.ended(attempt, status)  # a kill by the kernel's OOM killer named; its cgroup removed
        self.recorder.conclude(attempt, status, max_rss_kb)
