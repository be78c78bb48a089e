"""Lease arithmetic for masters sharing one PostgreSQL store: pure functions.

A master's lease is a row whose expiry the database sets from its own clock
(`now() + ttl`) each time the master renews it, every ttl/3. The master does
not read that expiry back as a time of its own: clocks of two hosts differ.
It trusts its lease only until its own monotonic clock passes

    trusted_until = (monotonic time when the renewal was SENT) + ttl - margin

The renewal cannot have been executed before it was sent, so the database's
expiry is at least ttl after that instant, whatever the network delay: the
master stops trusting its lease a margin before the database can call it
expired. When trust runs out the master stops claiming and ends its children
(TERM, then KILL after kill_grace). Any other master recovers the lease's
attempts only once it has been expired for `grace` = kill_grace + 2 margins,
so the children of a master that lost its database are gone before their jobs
run elsewhere. This fails only if a host is frozen (SIGSTOP, VM pause) for
longer than ttl + grace: it may wake with children still running beside the
re-run, and its late outcomes are then fenced (never recorded).

A master that dies (SIGKILL, OOM) cannot end its children; they end
themselves. A child that has not reached any master for `orphan_after`
seconds (see below) ends its own process group (TERM, then KILL after
kill_grace), before any other master may recover its job.
"""

from __future__ import annotations

from dataclasses import dataclass

RENEW_RETRY = 1.0  # seconds between renewals while the database does not answer

# A NOTIFY payload on the store's wake-up channel: a callback with no owner is
# owed (a pending job was cancelled); the first live master to read it takes it.
CALLBACKS_OWED = "callbacks"
# The start of a NOTIFY payload (then an attempt id) that asks the master
# running that attempt to end it: its cancel was requested in the store (any
# host's `phoenix cancel KEY --store URL`). A master also looks every
# CANCEL_POLL seconds while children run, should a notification be lost.
CANCEL_ASKED = "cancel:"
CANCEL_POLL = 2.0


@dataclass(frozen=True, slots=True)
class LeaseTimes:
    ttl: float  # seconds the database grants per renewal
    renew_every: float  # ttl / 3: two renewals may fail before trust runs out
    margin: float  # trust ends this long before the database's expiry
    grace: float  # another master recovers a lease expired for longer than this

    @property
    def renew_retry(self) -> float:
        """Seconds between renewals while the database does not answer."""
        return min(RENEW_RETRY, self.renew_every)

    @property
    def outage_budget(self) -> float:
        """The longest database outage that costs nothing, wherever it falls:
        the last renewal that got through may be up to one renewal period old
        when the outage starts, the first renewal after it comes up to one
        retry period after the database answers again, and trust ends a
        margin before the lease does. Past it, the running children are ended
        (their jobs re-run); past ttl + grace, other masters recover the jobs
        and outcomes held meanwhile are fenced. Not the ttl: that holds only
        for an outage that starts just as a renewal got through."""
        return max(0.0, self.ttl - self.renew_every - self.margin - self.renew_retry)

    @property
    def recovery_after(self) -> float:
        """Longest time from a master's death to its jobs being recovered,
        counted from its last successful renewal."""
        return self.ttl + self.grace


def lease_times(ttl: float, kill_grace: float) -> LeaseTimes:
    """The renewal period, trust margin and recovery grace of a lease of `ttl`
    seconds for children that take up to `kill_grace` seconds to end."""
    if ttl <= 0:
        raise ValueError("lease_ttl must be greater than 0")
    margin = min(ttl / 10, 2.0)  # clock-rate drift and scheduling slack; 2 s is plenty at any ttl
    return LeaseTimes(ttl=ttl, renew_every=ttl / 3, margin=margin, grace=kill_grace + 2 * margin)


def orphan_after(times: LeaseTimes, heartbeat_interval: float) -> float:
    """How long a child of a shared store may go without reaching any master
    before it ends its attempt. Its master's last renewal was at most one
    renewal period before the master died, so the lease expires no sooner than
    ttl - renew_every after the death, and another master recovers it
    `grace` (= kill_grace + 2 margins) later still. The child notices the
    death within one heartbeat interval and checks again at least every
    interval: two intervals and one margin come off, so it has ended, KILL
    included, a margin before the earliest recovery. A new master of the same
    node that comes up within this time adopts the child instead."""
    return max(0.0, times.ttl - times.renew_every + times.margin - 2 * heartbeat_interval)


def trusted_until(sent_at: float, ttl: float, margin: float) -> float:
    """Monotonic instant past which a lease renewed by a statement sent at
    `sent_at` (monotonic) may already have expired in the database's eyes."""
    return sent_at + ttl - margin


def may_claim(now: float, trust_ends: float, renew_every: float) -> bool:
    """Claim a job only while the lease is trusted for at least one more
    renewal period: a claim that starts a child just before trust runs out
    would be killed at once."""
    return now + renew_every / 2 < trust_ends


def children_must_end(now: float, trust_ends: float) -> bool:
    """The lease is no longer trusted: end every child before another master
    can recover its jobs."""
    return now >= trust_ends


def renewal_due(now: float, last_sent: float, renew_every: float) -> bool:
    return now >= last_sent + renew_every
