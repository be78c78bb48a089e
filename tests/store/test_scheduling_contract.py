"""Delayed jobs, priorities and periodic ticks in the store contract: the same
cases against the SQLite journal and the PostgreSQL store (issue 20)."""

from __future__ import annotations

import time

import pytest

from phoenix.store.base import KeyConflict, Store
from tests.store.test_contract import claim, store  # noqa: F401 - the store fixture, both backends


def test_a_delayed_job_is_scheduled_until_due_then_pending_once(store: Store) -> None:  # noqa: F811
    now = time.time()
    job_id, _ = store.submit("m:f", "1", "later", run_at=now + 0.6)
    store.submit("m:f", "2", "past", run_at=now - 3600)  # a time in the past: due at once
    assert store.counts()["scheduled"] == 1
    assert store.job_row(job_id)["state"] == "scheduled"
    assert claim(store)[0].key == "past"
    assert store.claim(1, 1, None) is None  # not due: never claimed, whatever the slots
    assert store.promote_due() == 0
    due_at = store.next_scheduled_at()
    assert due_at is not None and abs(due_at - (now + 0.6)) < 0.5
    time.sleep(max(0.0, now + 0.7 - time.time()))
    assert store.promote_due() == 1
    assert store.promote_due() == 0  # once
    assert store.next_scheduled_at() is None
    assert claim(store)[0].key == "later"


def test_another_due_time_or_priority_under_a_key_is_a_conflict(store: Store) -> None:  # noqa: F811
    at = time.time() + 3600
    job_id, _ = store.submit("m:f", "1", "k", run_at=at, priority=2)
    assert store.submit("m:f", "1", "k", run_at=at, priority=2) == (job_id, False)
    with pytest.raises(KeyConflict, match="another due time"):
        store.submit("m:f", "1", "k", run_at=at + 1, priority=2)
    with pytest.raises(KeyConflict, match="another due time"):
        store.submit("m:f", "1", "k", priority=2)  # due at once is another due time too
    with pytest.raises(KeyConflict, match="another priority"):
        store.submit("m:f", "1", "k", run_at=at, priority=3)


def test_claims_take_the_highest_priority_then_the_earliest_due_then_the_first_submitted(
        store: Store) -> None:  # noqa: F811
    now = time.time()
    store.submit("m:f", "1", "low-first")
    store.submit("m:f", "2", "high", priority=5)
    store.submit("m:f", "3", "low-second")
    store.submit("m:f", "4", "low-due-earlier", run_at=now - 60)
    store.submit("m:f", "5", "higher", priority=9)
    assert [claim(store)[0].key for _ in range(5)] == ["higher", "high", "low-due-earlier", "low-first",
                                                       "low-second"]


def test_cancel_and_retry_of_a_scheduled_job(store: Store) -> None:  # noqa: F811
    job_id, _ = store.submit("m:f", "1", "later", run_at=time.time() + 3600)
    assert store.cancel_pending("later") == "scheduled"
    assert store.job_row(job_id)["state"] == "cancelled"
    assert store.retry(["later"]) == ["later"]
    assert store.job_row(job_id)["state"] == "scheduled"  # it waits for its time again
    assert store.claim(1, 1, None) is None


def test_ticks_are_one_job_each_and_the_last_is_found_by_index(store: Store) -> None:  # noqa: F811
    assert store.last_tick("m:tick") is None
    for tick in (1000.0, 2000.0):
        created = store.submit("m:tick", "null", f"m:tick@{tick}", run_at=tick, tick=tick)[1]
        again = store.submit("m:tick", "null", f"m:tick@{tick}", run_at=tick, tick=tick)[1]
        assert created and not again  # a second master inserting the same tick: the same job
    store.submit("m:other", "null", "o", run_at=5000.0, tick=5000.0)
    assert store.last_tick("m:tick") == (2000.0, "pending")
    assert store.last_tick("m:tick", before=2000.0) == (1000.0, "pending")


def test_without_a_key_the_same_job_for_another_time_is_another_job(store: Store) -> None:  # noqa: F811
    at = time.time() + 3600
    plain = store.submit("m:f", "1")
    later = store.submit("m:f", "1", run_at=at)
    assert plain[1] and later[1] and plain[0] != later[0]
    assert store.submit("m:f", "1", run_at=at) == (later[0], False)
    assert store.submit("m:f", "1", priority=3)[1]


def test_a_full_pool_holds_back_only_its_own_jobs_until_an_outcome_frees_its_slot(
        store: Store) -> None:  # noqa: F811
    assert store.set_pools({"db": 2}, {"m:write": "db", "m:read": None}) == [("db", None, 2)]
    for i in range(4):
        store.submit("m:write", str(i), f"w{i}", priority=5)  # first in line, all of them
    store.submit("m:read", "1", "r")
    first, second = claim(store), claim(store)
    assert {first[0].key, second[0].key} == {"w0", "w1"}
    assert claim(store)[0].key == "r"  # the pool is full: the next job of another kind starts
    assert store.claim(1, 1, None) is None
    assert store.pools_status() == [{"pool": "db", "capacity": 2, "used": 2}]
    store.end_attempt(first[1], first[0].id, outcome="finished", reason=None, error=None, result_json="null",
                      max_rss_kb=None, job_state="finished", counts_as_failure=False, callback=None, attempt_n=1)
    assert store.pools_status()[0]["used"] == 1  # freed by the outcome, once
    store.end_attempt(first[1], first[0].id, outcome="finished", reason=None, error=None, result_json="null",
                      max_rss_kb=None, job_state="finished", counts_as_failure=False, callback=None, attempt_n=1)
    assert store.pools_status()[0]["used"] == 1
    assert claim(store)[0].key == "w2"
    assert store.claim(1, 1, None) is None
    assert store.set_pools({"db": 3}, {"m:write": "db"}) == [("db", 2, 3)]  # another capacity: said
    assert claim(store)[0].key == "w3"
