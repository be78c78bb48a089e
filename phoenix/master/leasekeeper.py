"""The lease keeper: a master's life in a shared (PostgreSQL) store.

It registers the master's lease row, renews it every ttl/3 on the database's
clock, and trusts it only as leases.py computes. While the lease is not
trusted the master claims nothing; once trust runs out it ends its children
(TERM, then KILL after kill_grace), so that another master's re-run of their
jobs never overlaps them. A renewal that finds the lease recovered (its
epoch moved on) ends the children at once and registers again.

Any master also recovers the others: each renewal also looks (in the same
statement) for masters whose lease expired past the grace period; when there
are, it takes them (SharedStore.recover) and picks up the callbacks they
owed. An idle master thus costs the database one statement per ttl/3.

Wake-ups come on one LISTEN connection in the master's selector; each
renewal pings it, and a listener that missed its ping is reconnected.

A cancel asked on any host (`phoenix cancel KEY --store URL`) is a mark on
the running attempt in the store and a NOTIFY naming the attempt: the
keeper of the master running it looks for its marked attempts then, and
every CANCEL_POLL seconds while children run (a notification can be lost
with its connection), and hands them to the master to end.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Mapping, Protocol

from phoenix import log
from phoenix.config import Config
from phoenix.linux.paths import exclusive_temporary
from phoenix.master.attempts import Attempt
from phoenix.master.loop import Loop
from phoenix.master.specs import JobSpecs
from phoenix.rules import leases
from phoenix.rules.policy import RestartBudget, after_attempt
from phoenix.rules.states import Outcome
from phoenix.store.base import JournalError, SharedStore, StoreUnavailable

FALLBACK_POLL = 2.0  # seconds between looks for jobs while the listener is not known to work


class LeasedMaster(Protocol):
    """What only the master decides (arbiter.Master)."""

    slots: int

    def cancel_attempts(self, attempt_ids: set[int]) -> None: ...  # cancels asked in the store (any host)
    def lease_state(self) -> str: ...  # running | draining | degraded
    def node_taken(self, why: str) -> None: ...  # another master holds our node name: stop


class LeaseKeeper:
    def __init__(self, master: LeasedMaster, end_children: Callable[[str], None], store: SharedStore,
                 config: Callable[[], Config], specs: JobSpecs, attempts: Mapping[int, Attempt], loop: Loop,
                 budget: Callable[[], RestartBudget], callbacks_held: Callable[[], bool],
                 run_owed_callbacks: Callable[[], None], jobs_may_be_pending: Callable[[], None]) -> None:
        """`end_children(why)`: TERM every child, KILL after kill_grace (hangs.HangKiller.interrupt_all).
        `budget`: the restart budget in force (a reload makes a new one).
        `callbacks_held()`: True while owed callbacks must stay owed (a
        replacement waits for callbacks to end; no app loaded)."""
        self.master = master
        self.end_children = end_children
        self.store = store
        self.config = config
        self.specs = specs
        self.attempts = attempts
        self.loop = loop
        self.clock = loop.clock
        self.budget = budget
        self.callbacks_held = callbacks_held
        self.run_owed_callbacks = run_owed_callbacks
        self.jobs_may_be_pending = jobs_may_be_pending
        self.times = leases.lease_times(config().lease_ttl, config().kill_grace)
        self.trust_ends = float("-inf")  # monotonic
        self.next_renewal = 0.0
        self.next_recovery = 0.0  # once at start; then whenever a renewal says a master is due (recovery_due)
        self.listener_fd: int | None = None
        self.ping_seen = True
        self.listener_ok = False  # the listener's last ping arrived: wake-ups can be trusted
        self.ended_children = False  # told to end after the lease lapsed
        self.failing = False  # renewals failing: said once
        self.owed_unknown = False  # a recovery's reply was lost: it may have made us owe callbacks
        self.next_cancel_look = 0.0  # monotonic: the next look for cancels asked of our running attempts

    def register(self, pid: int, generation: int, started_at: float, app: str | None) -> None:
        self.identity = (pid, generation, started_at, app)
        self.instance = instance_token(self.config().state_dir)  # read once: registering again needs no file
        sent = self.clock.monotonic()
        epoch = self._register()
        self.trusted(sent)
        log.event(logging.INFO, "lease", node=self.store.node, epoch=epoch, ttl=f"{self.times.ttl:g}s",
                  grace=f"{self.times.grace:g}s", outage_budget=f"{self.times.outage_budget:.1f}s")
        self.open_listener()

    def trusted(self, sent: float) -> None:
        self.trust_ends = leases.trusted_until(sent, self.times.ttl, self.times.margin)
        self.next_renewal = sent + self.times.renew_every
        self.ended_children = False

    def poll_interval(self) -> float:
        """How often the scheduler looks for due jobs unasked. While the
        listener has proved itself (its ping of the last renewal arrived),
        submits, retries and recoveries wake the master at once, and a look
        per renewal period only catches backoffs ending elsewhere; without a
        working listener, every 2 s."""
        if self.listener_ok:
            return max(FALLBACK_POLL, self.times.renew_every)
        return FALLBACK_POLL

    def may_claim(self, now: float) -> bool:
        return leases.may_claim(now, self.trust_ends, self.times.renew_every)

    def next_deadline(self) -> float:
        deadlines = [self.next_renewal, self.next_recovery]
        if self.attempts and not self.ended_children:
            deadlines.append(self.trust_ends)
        if self.attempts:
            deadlines.append(self.next_cancel_look)
        return min(deadlines)

    def tick(self, now: float) -> None:
        if now >= self.next_renewal:
            self.renew()
        if self.attempts and not self.ended_children and leases.children_must_end(self.clock.monotonic(),
                                                                                        self.trust_ends):
            self.ended_children = True
            log.event(logging.ERROR, "lease_lapsed", node=self.store.node, running=len(self.attempts),
                      effect="ending every child (TERM, then KILL after kill_grace): another master may "
                             "recover their jobs")
            self.end_children("its master's lease lapsed")
        if now >= self.next_recovery or self.store.recovery_due:
            self.next_recovery = float("inf")
            self.store.recovery_due = False
            self.recover()
        if self.attempts and now >= self.next_cancel_look:
            self.look_for_cancels(now)

    def look_for_cancels(self, now: float) -> None:
        """End the running attempts whose cancel was asked in the store."""
        self.next_cancel_look = now + leases.CANCEL_POLL
        try:
            asked = self.store.cancels_requested()
        except StoreUnavailable:
            return  # looked for again at the next poll; a lapsing lease ends the children anyway
        if asked:
            self.master.cancel_attempts(asked)

    def renew(self) -> None:
        sent = self.clock.monotonic()
        try:
            live = self.store.renew_lease(self.master.lease_state(), self.master.slots, len(self.attempts),
                                          grace=self.times.grace)
        except StoreUnavailable as exc:
            self.next_renewal = sent + self.times.renew_retry
            if not self.failing:
                self.failing = True
                log.event(logging.ERROR, "lease_renew_failed", node=self.store.node, error=str(exc),
                          effect=f"no claims; children end if the lease lapses "
                                 f"(in {max(0.0, self.trust_ends - sent):.1f}s)")
            return
        if self.failing:
            self.failing = False
            log.event(logging.WARNING, "lease_renewed", node=self.store.node)
        if not live:
            # Another master recovered us: our attempts are lost, their jobs may run elsewhere now.
            log.event(logging.ERROR, "lease_lost", node=self.store.node, running=len(self.attempts),
                      effect="ending every child now; registering again under a new epoch")
            if self.attempts:
                self.end_children("its master's lease was recovered by another master")
            self.register_again(sent)
            return
        self.trusted(sent)
        if self.owed_unknown and not self.callbacks_held():
            try:
                self.run_owed_callbacks()  # those a recovery whose reply was lost made ours
                self.owed_unknown = False
            except StoreUnavailable:
                pass  # after the next renewal, then
        self.listener_ok = self.ping_seen and self.listener_fd is not None
        if not self.listener_ok:
            self.open_listener()  # the last renewal's ping never came: the listener is dead
            if not self.callbacks_held():
                self.run_owed_callbacks()  # a NOTIFY of an owed callback (a cancel) may have been missed
        self.ping_seen = False

    def _register(self) -> int:
        pid, generation, started_at, app = self.identity
        return self.store.register_master(pid, generation, started_at, self.master.slots, app,
                                          instance=self.instance,
                                          grace=self.times.grace, outage_budget=self.times.outage_budget)

    def register_again(self, sent: float) -> None:
        try:
            self._register()
        except StoreUnavailable:
            self.next_renewal = sent + self.times.renew_retry  # tried again then; no claims meanwhile
            return
        except JournalError as exc:  # another master took the node meanwhile (or the schema moved on)
            self.next_renewal = float("inf")
            self.master.node_taken(str(exc))
            return
        self.trusted(sent)

    def open_listener(self) -> None:
        self.close_listener()
        try:
            self.listener_fd = self.store.open_listener()
        except StoreUnavailable as exc:
            log.event(logging.WARNING, "listener_failed", error=str(exc), effect="polling every 2 s")
            return
        self.ping_seen = True
        self.loop.watch(self.listener_fd, self.read_listener)

    def close_listener(self) -> None:
        self.listener_ok = False
        if self.listener_fd is not None:
            try:
                self.loop.unwatch(self.listener_fd)
            except (KeyError, ValueError):
                pass
        self.listener_fd = None
        self.store.close_listener()

    def read_listener(self) -> None:
        try:
            payloads = self.store.read_notifies()
        except StoreUnavailable:
            self.close_listener()
            return
        if not payloads and self.listener_fd is not None:
            return
        for payload in payloads:
            if payload == f"ping:{self.store.node}":
                self.ping_seen = True
            elif payload == leases.CALLBACKS_OWED:
                if not self.callbacks_held():
                    self.run_owed_callbacks()  # the first master to read it takes it (owed_callbacks)
            elif payload.startswith(leases.CANCEL_ASKED):
                asked = payload.removeprefix(leases.CANCEL_ASKED)
                if any(str(attempt.attempt_id) == asked for attempt in self.attempts.values()):
                    self.look_for_cancels(self.clock.monotonic())  # the store says whether it is ours to end
            elif not payload.startswith("ping:"):
                self.jobs_may_be_pending()

    def recover(self) -> None:
        """Recover masters whose lease is gone, and take up callbacks they owed."""
        now = self.clock.monotonic()

        def decide(target: str, failures: int) -> tuple[str, bool, float | None, str | None]:
            # A target this master's code lacks (another fleet's job): its policy is not known
            # here, so the job goes back to pending and the master that claims it judges (may_run).
            spec = self.specs.known_spec(target)
            retries = None if spec is None else self.specs.retries(spec)
            config = self.config()
            after = after_attempt(Outcome.LOST, failures, retries, budget=self.budget(), now=now,
                                  backoff_base=config.backoff_base, backoff_cap=config.backoff_cap)
            delay = after.delay if after.job_state == "pending" and after.counts_as_failure else None
            return after.job_state, after.counts_as_failure, delay, after.callback

        try:
            owed = self.store.recover(self.times.grace, decide)
        except StoreUnavailable:
            # Tried again when a renewal says a master is due. The recovery may have committed
            # with its reply lost: the callbacks it made us owe run after the next renewal.
            self.owed_unknown = True
            return
        masters, attempts = self.store.last_recovery
        if not masters:
            return
        log.event(logging.WARNING, "recovered", masters=",".join(masters), attempts=attempts, callbacks=len(owed))
        self.jobs_may_be_pending()
        if not self.callbacks_held():
            self.run_owed_callbacks()  # our new ones, and any the recovered masters owed

    def release(self, state: str) -> None:
        self.close_listener()
        try:
            self.store.release_lease(state)
        except StoreUnavailable:
            pass  # it lapses on its own


INSTANCE_FILE = "node-id"


def instance_token(state_dir: str | os.PathLike[str]) -> str:
    """This state directory's token in the shared store, made once: masters
    started from the same directory (a restart, a replacement) are one node;
    another directory under the same node name (another container with the
    same host name) is another master, refused while the node is held. The
    file names the directory it was made in (device and inode): a copy of it
    (`cp -a`, a volume or an image built with the state directory inside) is
    another directory, and gets a token of its own."""
    path = os.path.join(state_dir, INSTANCE_FILE)
    here = _directory_identity(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    else:
        with os.fdopen(fd, "r") as existing:
            fields = existing.read().split()
        if len(fields) == 2 and fields[1] == here:
            return fields[0]
        # Empty (a crash between create and write), made elsewhere (a copy), or an older Phoenix's: made anew.
    token = os.urandom(16).hex()  # not uuid: it imports platform, milliseconds of every new image's blind window
    fd, temporary = exclusive_temporary(state_dir, f".{INSTANCE_FILE}.")
    try:
        with os.fdopen(fd, "w") as made:
            made.write(f"{token} {here}\n")
            made.flush()
            os.fsync(made.fileno())
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return token


def _directory_identity(state_dir: str | os.PathLike[str]) -> str:
    facts = os.stat(state_dir)
    return f"{facts.st_dev}:{facts.st_ino}"
