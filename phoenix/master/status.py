"""What the master shows of itself: its process title and systemd's STATUS
line (kept current every turn), and the live answer of `phoenix status`."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Protocol

from phoenix.app import App
from phoenix.linux import procfs, systemd
from phoenix.linux.clock import Clock
from phoenix.linux.title import set_title
from phoenix.linux.untrusted import visible
from phoenix.master.attempts import AttemptTable
from phoenix.master.handoff import Handoff
from phoenix.master.metrics import Counters
from phoenix.master.spawner import Spawner
from phoenix.rules.states import MasterState
from phoenix.store.base import Store
from phoenix.store.outage import JournalOutage
from phoenix.wire import heartbeat as protocol

SHARED_TITLE_EVERY = 60.0  # seconds between two counts of a shared store's pending jobs (it counts every node's)


class Shown(Protocol):
    """What only the master knows of itself (arbiter.Master)."""

    generation: int
    state: MasterState
    degraded_reason: str | None
    started_at: float  # wall time, shown
    slots: int


class Status:
    def __init__(self, master: Shown, app: App | None, app_spec: str | None, journal: Callable[[], Store],
                 attempts: AttemptTable, counters: Counters, spawner: Spawner, handoff: Handoff,
                 outage: JournalOutage, clock: Clock, unrecorded_outcomes: Callable[[], int],
                 memory_limits: Callable[[], str]) -> None:
        """`unrecorded_outcomes()`: outcomes the journal has not taken yet (stopping.Stopping).
        `memory_limits()`: what enforces max_memory (memory.Watchers.enforcer)."""
        self.master = master
        self.app_name = (app.name if app is not None else None) or app_spec or "-"
        self.app_spec = app_spec
        self.journal = journal
        self.attempts = attempts
        self.counters = counters
        self.spawner = spawner
        self.handoff = handoff
        self.outage = outage
        self.clock = clock
        self.unrecorded_outcomes = unrecorded_outcomes
        self.memory_limits = memory_limits
        self.title_due = 0.0

    def update_title(self, force: bool = False) -> None:
        now = self.clock.monotonic()
        if not force and now < self.title_due:
            return
        m, journal, running = self.master, self.journal(), len(self.attempts)
        self.title_due = now + (SHARED_TITLE_EVERY if journal.shared else 0.5)  # a shared count costs more
        if self.counters.histograms is not None:  # --metrics exports the count of every state
            self.counters.jobs = journal.counts()
            self.counters.pools = journal.pools_status()
            pending = self.counters.jobs["pending"]
        else:  # through an index (a shared store's counts() aggregates every job on the server)
            pending = journal.pending_count()
        if m.state == MasterState.DEGRADED:
            set_title(f"phoenix: master gen {m.generation} [{self.app_name}] DEGRADED {running} running")
            first_line = (m.degraded_reason or "no app loaded").splitlines()[0]
            systemd.notify(f"STATUS=degraded: {visible(first_line[:200])}")
            return
        set_title(f"phoenix: master gen {m.generation} [{self.app_name}] {running} running {pending} pending")
        systemd.notify(f"STATUS=gen {m.generation}: {running} running, {pending} pending")

    def live(self, with_running: bool = True) -> dict[str, Any]:
        """`phoenix status`'s answer: the master, and each running attempt
        (left out when not `with_running`: a poll that needs the master only)."""
        m, now = self.master, self.clock.monotonic()
        shown_state = m.state if m.state in (MasterState.DRAINING, MasterState.DEGRADED) else "running"
        master = {
            "pid": os.getpid(),
            "generation": m.generation,
            "state": str(shown_state),
            "degraded_reason": m.degraded_reason if m.state == MasterState.DEGRADED else None,
            "started_at": m.started_at,
            "uptime": round(time.time() - m.started_at, 3),
            "workers": m.slots,
            "slots_used": len(self.attempts),
            "spare_pid": self.spawner.spare.pid if self.spawner.spare else None,
            "fork_server_pid": self.spawner.server.pid if self.spawner.server else None,
            "app": self.app_spec,
            "beats": self.counters.beats,
            "beats_missing": self.counters.beats_missing,
            "rejected": self.counters.rejected,
            "reload": self.handoff.last_result,
            "unrecorded_outcomes": self.unrecorded_outcomes(),
            "journal_error": self.outage.error,
            "memory_limits": self.memory_limits(),  # what enforces max_memory
        }
        if not with_running:
            return {"master": master}
        return {
            "master": master,
            "running": {
                str(a.job_id): {
                    "pid": a.pid,
                    "attempt": a.number,
                    "age": round(now - a.started, 3),
                    "last_beat_age": round(now - a.last_beat, 3),
                    "heartbeats": a.progress,  # calls to phoenix.heartbeat() and phoenix.progress()
                    "progress": protocol.progress_view(a.reported),
                    "rss": procfs.rss_bytes(a.pid),
                    "adopted": not a.own_child,
                }
                for a in self.attempts.values()
            },
        }
