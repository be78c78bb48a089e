"""The batch cases of the store contract, against both stores: the remaining
count moves with each member's final state in its own transaction, the
completion owes one `on_batch_complete`, a retry re-opens the count."""

from __future__ import annotations

import pytest

from phoenix.store.base import Store
from phoenix.store.batches import KIND, BatchRefused
from phoenix.store.sqlite import RetryRefused
from tests.store.test_contract import claim, end, store  # noqa: F401 - the fixture, for both stores


def batch_callbacks(store: Store) -> list[tuple[int, int, int, str]]:  # noqa: F811
    return [owed for owed in store.owed_callbacks() if owed[3] == KIND]


def test_a_batch_completes_in_the_transaction_of_its_last_outcome(store: Store) -> None:  # noqa: F811
    jobs = [("m:f", str(n), f"b-{n}") for n in range(3)]
    ids = [job_id for job_id, created in store.submit_to_batch("b", jobs) if created]
    assert len(ids) == 3
    assert store.submit_to_batch("b", jobs[:1]) == [(ids[0], False)]  # the same job again: a no-op
    with pytest.raises(BatchRefused, match="submitted before in no batch"):
        store.submit("m:f", "9", "loose")
        store.submit_to_batch("b", [("m:f", "9", "loose")])
    assert store.cancel_pending("b-2") == "pending"  # a cancel is a final state too
    for _ in range(2):
        job, attempt_id = claim(store)
        end(store, attempt_id, job.id, callback=None)
    [batch] = store.batches(name="b")
    assert (batch["state"], batch["remaining"], batch["counts"]) == ("open", 0, {"cancelled": 1, "finished": 2})
    assert batch_callbacks(store) == []  # not closed yet: not complete
    assert store.close_batch("b") == "complete"  # closed with nothing left: complete at once
    [owed] = batch_callbacks(store)
    assert store.close_batch("b") == "complete"  # again: nothing changes
    assert batch_callbacks(store) == [owed]
    with pytest.raises(BatchRefused, match="batch 'b' is complete"):
        store.submit_to_batch("b", [("m:f", "10", "late")])
    with pytest.raises(BatchRefused, match="no batch named 'nope'"):
        store.close_batch("nope")
    assert store.job_by_key("late") is None


def test_the_last_outcome_owes_the_callback_and_a_retry_reopens_the_count(store: Store) -> None:  # noqa: F811
    store.submit_to_batch("b", [("m:f", "1", "ok"), ("m:f", "2", "bad")])
    assert store.close_batch("b") == "closed"
    ok, ok_attempt = claim(store)
    bad, bad_attempt = claim(store)
    end(store, ok_attempt, ok.id, callback=None)
    assert store.batches(name="b")[0]["remaining"] == 1 and batch_callbacks(store) == []
    end(store, bad_attempt, bad.id, outcome="error", job_state="failed", callback=None)
    [(callback_id, job_id, attempt, kind)] = batch_callbacks(store)
    assert (job_id, attempt) == (bad.id, 1)  # on the member whose end completed the batch
    [batch] = store.batches(name="b")
    assert (batch["state"], batch["completions"], batch["counts"]) == ("complete", 1, {"failed": 1, "finished": 1})
    with pytest.raises(RetryRefused, match="owed"):  # (the batch's callback, on this very job)
        store.retry(["bad"])
    assert store.callback_started(callback_id) is not False
    assert store.callback_done(callback_id, None) is not False
    assert store.retry(["bad"]) == ["bad"]
    [batch] = store.batches(name="b")
    assert (batch["state"], batch["remaining"]) == ("closed", 1)
    job, attempt_id = claim(store)
    end(store, attempt_id, job.id, n=2, callback=None)
    [(_id, job_id, attempt, _kind)] = batch_callbacks(store)
    assert (job_id, attempt) == (bad.id, 2)
    [batch] = store.batches(name="b")
    assert (batch["state"], batch["completions"], batch["counts"]) == ("complete", 2, {"finished": 2})
