"""Global resource pools on the shared store: a slot is held from the claim
until the attempt's outcome or its master's recovery, never on a timer, and
concurrent claims never take more slots than the capacity."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("psycopg")

from tests.store.test_pg_store import expire, lost_job, master  # noqa: E402


def test_the_recovery_of_a_dead_master_frees_its_slots_and_a_late_outcome_frees_none(pg_url: str) -> None:
    a, b = master(pg_url, "a"), master(pg_url, "b")
    a.set_pools({"db": 1}, {"m:write": "db"})
    job_id, _ = a.submit("m:write", "1", "w1")
    b.submit("m:write", "2", "w2")
    _job, first = a.claim(1, 10, None)  # type: ignore[misc]
    assert b.claim(1, 20, None) is None  # the slot is a's, however long its job runs
    expire(pg_url, "a")
    b.recover(5.0, lost_job)
    assert b.pools_status() == [{"pool": "db", "capacity": 1, "used": 0}]
    claimed = b.claim(1, 20, None)
    assert claimed is not None
    assert a.end_attempt(first, job_id, outcome="finished", reason=None, error=None, result_json="1",
                         max_rss_kb=None, job_state="finished", counts_as_failure=False, callback=None,
                         attempt_n=1) == (False, None)  # fenced: late, and it frees no slot b holds
    assert b.pools_status()[0]["used"] == 1


def test_masters_claiming_at_once_never_take_more_slots_than_the_pool_has(pg_url: str) -> None:
    masters = [master(pg_url, f"n{i}") for i in range(4)]
    masters[0].set_pools({"db": 3}, {"m:write": "db"})
    for i in range(40):
        masters[0].submit("m:write", str(i), f"w{i}")
    masters[0].submit("m:read", "1", "r")
    taken: list[str] = []
    start = threading.Barrier(len(masters))

    def claim_all(store) -> None:
        start.wait()
        for _ in range(5):
            claimed = store.claim(1, 1, None)
            if claimed is not None:
                taken.append(claimed[0].key)

    threads = [threading.Thread(target=claim_all, args=(store,)) for store in masters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([k for k in taken if k.startswith("w")]) == 3 and "r" in taken
    assert masters[0].pools_status() == [{"pool": "db", "capacity": 3, "used": 3}]
    for store in masters:
        store.close()
