"""The hang killer: runs the deadlines due on the timer heap. A liveness
check asks liveness.verdict, after everything waiting on the children's
connections has been read (so a beat that waits for the master is never
taken for silence); before a heartbeat kill it makes sure the socket file
was not removed under us; a kill is TERM, then KILL after kill_grace."""

from __future__ import annotations

import logging
import os
import signal
from typing import Protocol

from phoenix import log
from phoenix.config import Config
from phoenix.linux import lineage
from phoenix.linux.clock import SYSTEM, Clock
from phoenix.master.attempts import Attempt
from phoenix.master.heartbeats import HeartbeatIntake
from phoenix.master.metrics import Counters, Histograms
from phoenix.master.timers import TimerHeap
from phoenix.rules.liveness import Verdict, verdict
from phoenix.rules.states import KillReason, TimerKind


class HangHost(Protocol):
    config: Config
    children: dict[int, Attempt]
    timers: TimerHeap
    counters: Counters
    histograms: Histograms | None
    intake: HeartbeatIntake

    def read_heartbeats(self) -> None: ...
    def heartbeat_socket_restored(self) -> bool: ...  # True: it was gone, is back, and every child has grace


# Seconds between two looks at a silent child whose connection may be one the
# master cannot accept for want of descriptors (its beats wait on it, unread).
BACKLOG_RECHECK = 1.0
CONNECTION_CLOSED_ADVICE = ("the job closed its own connection to the master (it closed every descriptor, or the "
                            "heartbeat socket) and sent nothing since; close only the descriptors the job opened")


class HangKiller:
    def __init__(self, host: HangHost, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self.host = host

    def run_due_timers(self, now: float) -> None:
        """A kill after kill_grace, or a liveness check, which re-arms itself
        for the attempt's next limit."""
        h = self.host
        read = False
        for timer in h.timers.pop_due(now):
            attempt = h.children.get(timer.pid)
            if attempt is None or attempt.attempt_id != timer.attempt_id:
                continue  # already gone
            if timer.kind == TimerKind.KILL:
                signal_attempt(attempt, signal.SIGKILL)
            elif attempt.kill_reason is None and attempt.final is None:  # not being killed, not done
                # Every connection that has something waiting is read before
                # anyone is found silent; a check that finds a recent beat (nearly
                # all: they re-arm) needs no read, which keeps beats batched.
                if not read and self._judge(attempt, now).reason is not None:
                    h.read_heartbeats()
                    read = True
                self.check(attempt, now)

    def check(self, attempt: Attempt, now: float) -> None:
        h = self.host
        judged = self._judge(attempt, now)
        reason = judged.reason
        if reason == KillReason.HEARTBEAT_TIMEOUT and h.heartbeat_socket_restored():
            judged = self._judge(attempt, now)  # the socket file was gone: the silence was ours
            reason = judged.reason
        if reason == KillReason.HEARTBEAT_TIMEOUT and not h.intake.has_link(attempt.pid):
            if h.intake.accept_short_since is not None:
                # Its connection may wait in the backlog the master cannot accept
                # from (out of descriptors): that silence is ours. Look again soon.
                h.timers.push(now + BACKLOG_RECHECK, TimerKind.CHECK, attempt.pid, attempt.attempt_id)
                return
            if attempt.connection_closed_at is not None:
                reason = KillReason.CONNECTION_CLOSED
        if reason is None:
            h.timers.push(judged.next_check, TimerKind.CHECK, attempt.pid, attempt.attempt_id)
        else:
            self.kill(attempt, reason, now)

    def _judge(self, attempt: Attempt, now: float) -> Verdict:
        return verdict(attempt.limits(self.host.config.heartbeat_timeout), last_beat=attempt.last_beat,
                       last_progress=attempt.last_progress, started=attempt.started, now=now)

    def kill(self, attempt: Attempt, reason: KillReason, now: float) -> None:
        h = self.host
        ages = {KillReason.HEARTBEAT_TIMEOUT: now - attempt.last_beat,
                KillReason.STALL_TIMEOUT: now - attempt.last_progress,
                KillReason.MAX_RUNTIME: now - attempt.started, KillReason.OPERATOR: 0.0,
                KillReason.CONNECTION_CLOSED: now - (attempt.connection_closed_at or attempt.last_beat)}
        attempt.kill_reason = reason
        attempt.kill_detail = f"{reason}: {ages[reason]:.2f} s"
        if reason == KillReason.CONNECTION_CLOSED:
            attempt.kill_detail += f" ago: {CONNECTION_CLOSED_ADVICE}"
        h.counters.count(h.counters.kills, reason)
        if reason == KillReason.HEARTBEAT_TIMEOUT and h.histograms is not None:
            late = now - attempt.last_beat - attempt.limits(h.config.heartbeat_timeout).heartbeat_timeout
            h.histograms.detection_latency.observe(max(0.0, late))
        log.event(logging.WARNING, "kill", pid=attempt.pid, job=attempt.key, attempt=attempt.number, reason=reason,
                  after=f"{ages[reason]:.2f}s")
        self.stop(attempt, now)

    def cancel(self, attempt: Attempt, now: float) -> None:
        """`phoenix cancel` of a running job: its outcome will be `cancelled`."""
        attempt.kill_reason, attempt.kill_detail = KillReason.CANCELLED, None
        self.host.counters.count(self.host.counters.kills, KillReason.CANCELLED)
        log.event(logging.WARNING, "kill", pid=attempt.pid, job=attempt.key, attempt=attempt.number,
                  reason=KillReason.CANCELLED)
        self.stop(attempt, now)

    def stop(self, attempt: Attempt, now: float) -> None:
        """TERM now (and CONT: a stopped process only acts on TERM once continued), KILL after kill_grace."""
        signal_attempt(attempt, signal.SIGTERM)
        signal_attempt(attempt, signal.SIGCONT)
        self.host.timers.push(now + self.host.config.kill_grace, TimerKind.KILL, attempt.pid, attempt.attempt_id)


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
