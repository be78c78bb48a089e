"""The lease keeper's part in a cancel from any host, in-process: it looks
for the cancels asked of its running attempts at once when a NOTIFY names one
of them, every CANCEL_POLL seconds while children run (a lost notification),
never while it runs none, and an unreachable store only delays the look."""

from __future__ import annotations

from types import SimpleNamespace

from phoenix.master.leasekeeper import LeaseKeeper
from phoenix.master.loop import Loop
from phoenix.rules.leases import CANCEL_POLL
from phoenix.store.base import StoreUnavailable
from phoenix.testing import FakeClock


class Store:
    node = "a"
    recovery_due = False

    def __init__(self, asked: set[int]) -> None:
        self.asked = asked
        self.looks = 0
        self.payloads: list[str] = []
        self.unavailable = False

    def cancels_requested(self) -> set[int]:
        self.looks += 1
        if self.unavailable:
            raise StoreUnavailable("PostgreSQL store: connection refused")
        return self.asked

    def read_notifies(self) -> list[str]:
        payloads, self.payloads = self.payloads, []
        return payloads


class Host:
    """The master's side: its running attempts and the one call a cancel makes of it."""

    def __init__(self, attempt_ids: list[int]) -> None:
        self.children = {1000 + i: SimpleNamespace(attempt_id=i) for i in attempt_ids}
        self.cancelled: list[set[int]] = []

    def cancel_attempts(self, attempt_ids: set[int]) -> None:
        self.cancelled.append(attempt_ids)


def keeper(store: Store, host: Host) -> LeaseKeeper:
    config = SimpleNamespace(lease_ttl=30.0, kill_grace=5.0)
    k = LeaseKeeper(host, lambda why: None, store, lambda: config, None, host.children,  # type: ignore[arg-type]
                    Loop(FakeClock()), lambda: None, lambda: False, lambda: None,  # type: ignore[arg-type]
                    lambda: None)  # only what a cancel uses
    k.next_renewal = k.next_recovery = k.trust_ends = float("inf")  # renewals and recoveries are not tested here
    return k


def test_a_master_with_children_looks_every_poll_period_and_ends_what_was_asked() -> None:
    store, host = Store({7}), Host([7, 8])
    k = keeper(store, host)
    assert k.next_deadline() == 0.0  # the first look is due at once
    k.tick(100.0)
    assert store.looks == 1 and host.cancelled == [{7}]
    k.tick(100.0 + CANCEL_POLL - 0.01)
    assert store.looks == 1
    assert k.next_deadline() == 100.0 + CANCEL_POLL
    k.tick(100.0 + CANCEL_POLL)
    assert store.looks == 2


def test_a_master_with_no_children_never_looks() -> None:
    store, host = Store(set()), Host([])
    k = keeper(store, host)
    k.tick(100.0)
    assert store.looks == 0 and k.next_deadline() == float("inf")


def test_a_notification_naming_one_of_its_attempts_makes_it_look_at_once_and_others_do_not() -> None:
    store, host = Store({8}), Host([7, 8])
    k = keeper(store, host)
    store.payloads = ["cancel:99"]  # another master's attempt
    k.read_listener()
    assert store.looks == 0
    store.payloads = ["cancel:8"]
    k.read_listener()
    assert store.looks == 1 and host.cancelled == [{8}]


def test_an_unreachable_store_delays_the_look_to_the_next_period() -> None:
    store, host = Store({7}), Host([7])
    store.unavailable = True
    k = keeper(store, host)
    k.tick(100.0)
    assert store.looks == 1 and host.cancelled == []
    store.unavailable = False
    k.tick(100.0 + CANCEL_POLL)
    assert host.cancelled == [{7}]
