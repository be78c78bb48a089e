"""Lease arithmetic (phoenix/leases.py): tables, and the property the design
rests on: a master that lost its database has ended its children before any
other master may recover their jobs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix.rules.leases import children_must_end, lease_times, may_claim, orphan_after, renewal_due, trusted_until


@pytest.mark.parametrize("ttl, kill_grace, renew_every, margin, grace", [
    (30.0, 5.0, 10.0, 2.0, 9.0),    # the defaults: margin capped at 2 s
    (2.0, 1.0, 2 / 3, 0.2, 1.4),    # the tests' short lease
    (10.0, 0.0, 10 / 3, 1.0, 2.0),
    (300.0, 5.0, 100.0, 2.0, 9.0),
])
def test_lease_times(ttl: float, kill_grace: float, renew_every: float, margin: float, grace: float) -> None:
    times = lease_times(ttl, kill_grace)
    assert times.renew_every == pytest.approx(renew_every)
    assert times.margin == pytest.approx(margin)
    assert times.grace == pytest.approx(grace)
    assert times.recovery_after == pytest.approx(ttl + grace)


def test_a_lease_needs_a_positive_ttl() -> None:
    with pytest.raises(ValueError, match="lease_ttl"):
        lease_times(0, 5)


@pytest.mark.parametrize("now, trust_ends, renew_every, claim, end", [
    (0.0, 28.0, 10.0, True, False),    # just renewed
    (22.0, 28.0, 10.0, True, False),   # two renewals late still leaves trust
    (23.0, 28.0, 10.0, False, False),  # less than half a renewal period left: no new children
    (27.9, 28.0, 10.0, False, False),
    (28.0, 28.0, 10.0, False, True),   # trust ran out: end the children
    (40.0, 28.0, 10.0, False, True),
])
def test_claims_and_children_by_trust(now: float, trust_ends: float, renew_every: float, claim: bool,
                                      end: bool) -> None:
    assert may_claim(now, trust_ends, renew_every) is claim
    assert children_must_end(now, trust_ends) is end


@pytest.mark.parametrize("now, last_sent, due", [(9.9, 0.0, False), (10.0, 0.0, True), (25.0, 10.0, True)])
def test_renewal_due(now: float, last_sent: float, due: bool) -> None:
    assert renewal_due(now, last_sent, 10.0) is due


@given(ttl=st.floats(0.5, 600), kill_grace=st.floats(0, 60), delay=st.floats(0, 600), sent=st.floats(0, 1e6))
def test_children_end_before_anyone_may_recover_their_jobs(ttl: float, kill_grace: float, delay: float,
                                                           sent: float) -> None:
    """The renewal sent at `sent` runs in the database `delay` later (network,
    queueing): its lease expires at sent + delay + ttl on a clock that runs
    at the master's rate. The master's last child is gone by trust's end +
    kill_grace; another master recovers no earlier than expiry + grace."""
    times = lease_times(ttl, kill_grace)
    children_gone_by = trusted_until(sent, ttl, times.margin) + kill_grace
    earliest_recovery = sent + delay + ttl + times.grace
    assert children_gone_by + 2 * times.margin <= earliest_recovery + 1e-6 * max(1.0, sent)


@pytest.mark.parametrize("ttl, kill_grace, interval, after", [
    (30.0, 5.0, 1.0, 20.0),     # defaults: 30 - 10 + 2 - 2
    (2.0, 1.0, 0.2, 2 - 2 / 3 + 0.2 - 0.4),
    (3.0, 1.0, 2.0, 0.0),       # a beat interval this long leaves no time: end at the first failed beat
])
def test_orphan_after(ttl: float, kill_grace: float, interval: float, after: float) -> None:
    assert orphan_after(lease_times(ttl, kill_grace), interval) == pytest.approx(after)


@given(ttl=st.floats(1.0, 600.0), kill_grace=st.floats(0.0, 60.0), interval_share=st.floats(0.001, 1 / 6),
       renewed_before_death=st.floats(0.0, 1.0), noticed=st.floats(0.0, 1.0), checked=st.floats(0.0, 1.0))
def test_an_orphaned_child_is_gone_before_its_job_can_be_recovered(
        ttl: float, kill_grace: float, interval_share: float, renewed_before_death: float, noticed: float,
        checked: float) -> None:
    """The master dies at 0, having renewed up to one period earlier; its child
    notices within one interval, checks at least once per interval, then takes
    up to kill_grace to end. Another master recovers no sooner than expiry + grace."""
    times = lease_times(ttl, kill_grace)
    interval = ttl * interval_share
    expiry = -renewed_before_death * times.renew_every + times.ttl
    child_gone = noticed * interval + orphan_after(times, interval) + checked * interval + kill_grace
    assert child_gone <= expiry + times.grace


@given(ttl=st.floats(0.5, 600), kill_grace=st.floats(0, 60), since_renewal=st.floats(0, 1), outage=st.floats(0, 1))
def test_an_outage_within_the_budget_never_ends_a_child(ttl: float, kill_grace: float, since_renewal: float,
                                                        outage: float) -> None:
    """The outage starts up to one renewal period after the last renewal that
    got through (sent at 0) and lasts up to the budget; the next renewal is
    sent up to one retry period after the store answers again: trust has not
    run out by then, so no child was ended. An outage as long as the ttl
    that starts a renewal period late outlives trust."""
    times = lease_times(ttl, kill_grace)
    starts = since_renewal * times.renew_every
    renewed = starts + outage * times.outage_budget + times.renew_retry
    trust_ends = trusted_until(0.0, ttl, times.margin)
    assert not children_must_end(renewed, trust_ends + 1e-9 * ttl)
    assert children_must_end(times.renew_every + ttl, trust_ends)
