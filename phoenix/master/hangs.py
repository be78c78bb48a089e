"""The hang killer: runs the deadlines due on the timer heap. A liveness
check asks liveness.verdict, after everything waiting on the children's
connections has been read (so a beat that waits for the master is never
taken for silence); before a heartbeat kill it makes sure the socket file
was not removed under us; a kill is TERM, then KILL after kill_grace."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from typing import Callable, Protocol

from phoenix import log
from phoenix.config import Config
from phoenix.linux import lineage
from phoenix.master.attempts import Attempt
from phoenix.master.loop import Loop
from phoenix.master.metrics import Counters
from phoenix.rules.liveness import Limits, Verdict, verdict
from phoenix.rules.states import KillReason, TimerKind


class Links(Protocol):
    """What the hang killer asks the heartbeat intake (HeartbeatIntake)."""

    accept_short_since: float | None  # out of descriptors to accept connections since then

    def has_link(self, pid: int) -> bool: ...


# Seconds between two looks at a silent child whose connection may be one the
# master cannot accept for want of descriptors (its beats wait on it, unread).
BACKLOG_RECHECK = 1.0
CONNECTION_CLOSED_ADVICE = ("the job closed its own connection to the master (it closed every descriptor, or the "
                            "heartbeat socket) and sent nothing since; close only the descriptors the job opened")


class HangKiller:
    """The one writer of an attempt's kill_reason, kill_detail, interrupted and final_before_stop."""

    def __init__(self, attempts: Mapping[int, Attempt], loop: Loop, config: Callable[[], Config],
                 counters: Counters, links: Links, read_heartbeats: Callable[[], None],
                 heartbeat_socket_restored: Callable[[], bool],
                 note_kill: Callable[[Attempt, KillReason], None] = lambda attempt, reason: None) -> None:
        """`read_heartbeats`: read every beat waiting before anyone is found
        silent; `heartbeat_socket_restored`: True if the socket file was gone,
        is back, and every child has been given grace; `note_kill`: keep a
        kill's reason with the attempt in the journal, so that a master that
        takes the attempt over mid-kill (a replacement, a restart) ends it for
        that reason too."""
        self.attempts = attempts
        self.timers = loop.timers
        self.clock = loop.clock
        self.config = config
        self.counters = counters
        self.links = links
        self.read_heartbeats = read_heartbeats
        self.heartbeat_socket_restored = heartbeat_socket_restored
        self.note_kill = note_kill

    def run_due_timers(self, now: float) -> None:
        """A kill after kill_grace, or a liveness check, which re-arms itself
        for the attempt's next limit."""
        read = False
        for timer in self.timers.pop_due(now):
            attempt = self.attempts.get(timer.pid)
            if attempt is None or attempt.attempt_id != timer.attempt_id:
                continue  # already gone
            if timer.kind == TimerKind.KILL:
                signal_attempt(attempt, signal.SIGKILL)
            elif attempt.kill_reason is None and attempt.final is None:  # not being killed, not done
                # Every connection that has something waiting is read before
                # anyone is found silent; a check that finds a recent beat (nearly
                # all: they re-arm) needs no read, which keeps beats batched.
                if not read and self._judge(attempt, now).reason is not None:
                    self.read_heartbeats()
                    read = True
                self.check(attempt, now)

    def watch(self, attempt: Attempt, now: float) -> None:
        """A new attempt: its first liveness check, when its first limit could be reached."""
        self.timers.push(self._judge(attempt, now).next_check, TimerKind.CHECK, attempt.pid, attempt.attempt_id)

    def watch_adopted(self, attempt: Attempt, now: float) -> None:
        """An adopted attempt: one full heartbeat_timeout of grace before its first check."""
        self.timers.push(now + self.config().heartbeat_timeout, TimerKind.CHECK, attempt.pid, attempt.attempt_id)

    def check(self, attempt: Attempt, now: float) -> None:
        judged = self._judge(attempt, now)
        reason = judged.reason
        if reason == KillReason.HEARTBEAT_TIMEOUT and self.heartbeat_socket_restored():
            judged = self._judge(attempt, now)  # the socket file was gone: the silence was ours
            reason = judged.reason
        if reason == KillReason.HEARTBEAT_TIMEOUT and not self.links.has_link(attempt.pid):
            if self.links.accept_short_since is not None:
                # Its connection may wait in the backlog the master cannot accept
                # from (out of descriptors): that silence is ours. Look again soon.
                self.timers.push(now + BACKLOG_RECHECK, TimerKind.CHECK, attempt.pid, attempt.attempt_id)
                return
            if attempt.connection_closed_at is not None:
                reason = KillReason.CONNECTION_CLOSED
        if reason is None:
            self.timers.push(judged.next_check, TimerKind.CHECK, attempt.pid, attempt.attempt_id)
        else:
            self.kill(attempt, reason, now)

    def limits(self, attempt: Attempt) -> Limits:
        """The one place an attempt's limits are merged with the app's default (which a reload may change)."""
        return attempt.limits(self.config().heartbeat_timeout)

    def _judge(self, attempt: Attempt, now: float) -> Verdict:
        # A job blocked in checkpoint() by the master's journal makes no progress
        # through no fault of its own, and that time is not its runtime either:
        # never charged an attempt for our shortage.
        last_progress = now if attempt.checkpoint_waits_since is not None else attempt.last_progress
        return verdict(self.limits(attempt), last_beat=attempt.last_beat, last_progress=last_progress,
                       started=attempt.started + attempt.master_wait(now), now=now)

    def kill(self, attempt: Attempt, reason: KillReason, now: float) -> None:
        if not attempt.interrupted and attempt.kill_reason is None:  # (as a stop: see interrupt)
            attempt.final_before_stop = attempt.final is not None
        ages = {KillReason.HEARTBEAT_TIMEOUT: now - attempt.last_beat,
                KillReason.STALL_TIMEOUT: now - attempt.last_progress,
                KillReason.MAX_RUNTIME: now - attempt.started, KillReason.OPERATOR: 0.0,
                KillReason.CONNECTION_CLOSED: now - (attempt.connection_closed_at or attempt.last_beat)}
        attempt.kill_reason = reason
        attempt.kill_detail = f"{reason}: {ages[reason]:.2f} s"
        if reason == KillReason.CONNECTION_CLOSED:
            attempt.kill_detail += f" ago: {CONNECTION_CLOSED_ADVICE}"
        self.counters.count(self.counters.kills, reason)
        histograms = self.counters.histograms
        if reason == KillReason.HEARTBEAT_TIMEOUT and histograms is not None:
            late = now - attempt.last_beat - self.limits(attempt).heartbeat_timeout
            histograms.detection_latency.observe(max(0.0, late))
        log.event(logging.WARNING, "kill", pid=attempt.pid, job=attempt.key, attempt=attempt.number, reason=reason,
                  after=f"{ages[reason]:.2f}s")
        self.note_kill(attempt, reason)
        self.stop(attempt, now)

    def resume_kill(self, attempt: Attempt, reason: KillReason, now: float) -> None:
        """An adopted attempt its former master had begun to kill (OpenAttempt.ending):
        TERM again, KILL after kill_grace, and the outcome that kill's."""
        attempt.kill_reason = reason
        attempt.kill_detail = f"{reason} (the kill its former master began)"
        log.event(logging.WARNING, "kill", pid=attempt.pid, job=attempt.key, attempt=attempt.number, reason=reason,
                  how="resumed")
        self.stop(attempt, now)

    def cancel(self, attempt: Attempt, now: float) -> None:
        """`phoenix cancel` of a running job: its outcome will be `cancelled`
        (unless it had sent a finished final before: classify)."""
        if not attempt.interrupted and attempt.kill_reason is None:
            attempt.final_before_stop = attempt.final is not None
        attempt.kill_reason, attempt.kill_detail = KillReason.CANCELLED, None
        self.counters.count(self.counters.kills, KillReason.CANCELLED)
        log.event(logging.WARNING, "kill", pid=attempt.pid, job=attempt.key, attempt=attempt.number,
                  reason=KillReason.CANCELLED)
        self.stop(attempt, now)

    def interrupt(self, attempt: Attempt, now: float, why: str | None = None) -> None:
        """End an attempt for a reason that is not its job's (a stop, a lapsed
        lease): its outcome is `interrupted`, and its job runs again. One
        being killed already (a hang, max_runtime: TERM sent, KILL due after
        kill_grace) stays a kill: a stop then does not excuse the hang."""
        if attempt.kill_reason is not None and attempt.kill_reason != KillReason.CANCELLED:
            return
        if not attempt.interrupted:  # (the first TERM: a final that came after it is the stop's doing)
            attempt.final_before_stop = attempt.final is not None
        attempt.interrupted = True
        if why is not None:
            attempt.kill_detail = why
        self.stop(attempt, now)

    def interrupt_all(self, why: str) -> None:
        """End every attempt not being ended already (a shared store's lease
        lapsed or was recovered): TERM, KILL after kill_grace; their jobs go back under their policy."""
        now = self.clock.monotonic()
        for attempt in self.attempts.values():
            if attempt.kill_reason is None and not attempt.interrupted:
                self.interrupt(attempt, now, why)

    def stop(self, attempt: Attempt, now: float) -> None:
        """TERM now (and CONT: a stopped process only acts on TERM once continued), KILL after kill_grace."""
        signal_attempt(attempt, signal.SIGTERM)
        signal_attempt(attempt, signal.SIGCONT)
        self.timers.push(now + self.config().kill_grace, TimerKind.KILL, attempt.pid, attempt.attempt_id)


def signal_attempt(attempt: Attempt, signum: int) -> None:
    """Signal the attempt's whole process group (the job and anything it forked)."""
    try:
        if attempt.pidfd is not None:
            # Not our child, so its pid could be reused once it is gone: the
            # pidfd names exactly this process.
            signal.pidfd_send_signal(attempt.pidfd, signum)
        try:
            lineage.signal_escaped(attempt.pid, signum, attempt.escaped)  # what the job daemonised
        except OSError as exc:  # out of descriptors or memory to walk /proc: the group still gets the signal
            log.event(logging.WARNING, "escaped_not_signalled", pid=attempt.pid, signal=signum,
                      error=exc.strerror or str(exc))
        os.killpg(attempt.pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        log.event(logging.WARNING, "signal_failed", pid=attempt.pid, signal=signum, error=exc.strerror)
