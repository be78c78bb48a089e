"""The hang killer: runs the deadlines due on the timer heap. A liveness
check asks liveness.verdict; before a heartbeat kill it makes sure the
silence is the child's and not the master's (beats waiting in the socket, a
socket file removed under us); a kill is TERM, then KILL after kill_grace."""

from __future__ import annotations

import logging
import os
import signal
from typing import Protocol

from phoenix import lineage, log
from phoenix.attempts import Attempt
from phoenix.config import Config
from phoenix.heartbeats import HeartbeatIntake
from phoenix.liveness import Verdict, verdict
from phoenix.metrics import Counters, Histograms
from phoenix.sockets import datagram_queue_length
from phoenix.states import KillReason, TimerKind
from phoenix.timers import TimerHeap

# A master that has not emptied its heartbeat socket for this long is behind:
# it defers heartbeat kills (a false kill would only add fork work to the backlog).
BACKLOG_GRACE = 0.25
OVERLOAD_WARNING_EVERY = 60.0


class HangHost(Protocol):
    config: Config
    children: dict[int, Attempt]
    timers: TimerHeap
    intake: HeartbeatIntake
    counters: Counters
    histograms: Histograms | None

    def read_heartbeats(self) -> None: ...
    def heartbeat_socket_restored(self) -> bool: ...  # True: it was gone, is back, and every child has grace


class HangKiller:
    def __init__(self, host: HangHost) -> None:
        self.host = host
        self.overload_warned_at = -OVERLOAD_WARNING_EVERY

    def run_due_timers(self, now: float) -> None:
        """A kill after kill_grace, or a liveness check, which re-arms itself
        for the attempt's next limit."""
        h = self.host
        for timer in h.timers.pop_due(now):
            attempt = h.children.get(timer.pid)
            if attempt is None or attempt.attempt_id != timer.attempt_id:
                continue  # already gone
            if timer.kind == TimerKind.KILL:
                signal_attempt(attempt, signal.SIGKILL)
            elif attempt.kill_reason is None and attempt.final is None:  # not being killed, not done
                self.check(attempt, now)

    def check(self, attempt: Attempt, now: float) -> None:
        h = self.host
        judged = self._judge(attempt, now)
        if judged.reason == KillReason.HEARTBEAT_TIMEOUT:
            if now < h.intake.overloaded_until:
                # Children report beats that waited longer than an interval to get
                # into our socket: we are the bottleneck, and their silence may be ours.
                self._defer(attempt, now, "deferred_overload")
                self._warn_overloaded(now)
                return
            if now - h.intake.drained_at > BACKLOG_GRACE:
                # The master itself is behind: beats may be waiting in the socket
                # (or in blocked senders). Silence is not the child's fault yet.
                h.read_heartbeats()
                if now - h.intake.drained_at > BACKLOG_GRACE:
                    self._defer(attempt, now, "deferred_backlog")
                    return
                judged = self._judge(attempt, now)
            if judged.reason == KillReason.HEARTBEAT_TIMEOUT and h.heartbeat_socket_restored():
                judged = self._judge(attempt, now)  # the socket file was gone: the silence was ours
        if judged.reason is None:
            h.timers.push(judged.next_check, TimerKind.CHECK, attempt.pid, attempt.attempt_id)
        else:
            self.kill(attempt, judged.reason, now)

    def _judge(self, attempt: Attempt, now: float) -> Verdict:
        return verdict(attempt.limits(self.host.config.heartbeat_timeout), last_beat=attempt.last_beat,
                       last_progress=attempt.last_progress, started=attempt.started, now=now)

    def _defer(self, attempt: Attempt, now: float, why: str) -> None:
        self.host.counters.count(self.host.counters.kills, why)
        self.host.timers.push(now + BACKLOG_GRACE, TimerKind.CHECK, attempt.pid, attempt.attempt_id)

    def _warn_overloaded(self, now: float) -> None:
        if now - self.overload_warned_at < OVERLOAD_WARNING_EVERY:
            return
        self.overload_warned_at = now
        log.event(logging.WARNING, "overloaded", children=len(self.host.children),
                  heartbeat_interval=self.host.config.heartbeat_interval, max_dgram_qlen=datagram_queue_length(),
                  effect="heartbeat kills wait until beats get through; raise net.unix.max_dgram_qlen "
                         "(sysctl; 512 for hundreds of children) or heartbeat_interval, or lower workers")

    def kill(self, attempt: Attempt, reason: KillReason, now: float) -> None:
        h = self.host
        ages = {KillReason.HEARTBEAT_TIMEOUT: now - attempt.last_beat,
                KillReason.STALL_TIMEOUT: now - attempt.last_progress,
                KillReason.MAX_RUNTIME: now - attempt.started, KillReason.OPERATOR: 0.0}
        attempt.kill_reason = reason
        attempt.kill_detail = f"{reason}: {ages[reason]:.2f} s"
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
        lineage.signal_escaped(attempt.pid, signum, attempt.escaped)  # what the job daemonised
        os.killpg(attempt.pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        log.event(logging.WARNING, "signal_failed", pid=attempt.pid, signal=signum, error=exc.strerror)
