"""The store contract: the same cases against the SQLite journal, the
PostgreSQL store and the in-memory store, so that all keep the same
semantics; every method of the interface (base.Store) is called here."""

from __future__ import annotations

import ast
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from phoenix.rules.states import KillReason
from phoenix.store.base import KeyConflict, RetryRefused, Store
from phoenix.store.batches import KIND, BatchRefused
from phoenix.store.memory import MemoryStore
from phoenix.store.sqlite import Journal


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        journal = Journal(tmp_path / "journal.db")
        yield journal
        journal.close()
        return
    if request.param == "memory":
        with MemoryStore() as memory:
            yield memory
        return
    pytest.importorskip("psycopg")
    from phoenix.store.postgres import PgStore

    url = request.getfixturevalue("pg_url")
    shared = PgStore(url, node="n1", lease_ttl=30)
    shared.register_master(os.getpid(), 1, time.time(), 4, "tests.apps.jobs:app")
    yield shared
    shared.close()


def claim(store: Store, pid: int = 4242) -> tuple[Any, int]:
    claimed = store.claim(1, pid, None)
    assert claimed is not None
    return claimed


def end(store: Store, attempt_id: int, job_id: int, *, outcome: str = "finished", job_state: str = "finished",
        callback: str | None = "on_finished", n: int = 1, result: Any = None, delay: float | None = None,
        reason: str | None = None, max_rss_kb: int | None = None) -> tuple[bool, int | None]:
    return store.end_attempt(attempt_id, job_id, outcome=outcome, reason=reason, error=None,
                             result_json=json.dumps(result), max_rss_kb=max_rss_kb, job_state=job_state,
                             counts_as_failure=outcome != "finished", retry_delay=delay, callback=callback,
                             attempt_n=n)


def test_submit_is_idempotent_per_key_and_refuses_another_job_under_it(store: Store) -> None:
    job_id, created = store.submit("m:f", '{"a": 1}', "k")
    assert created
    assert store.submit("m:f", '{"a":1}', "k") == (job_id, False)  # the same JSON, written otherwise
    with pytest.raises(KeyConflict, match="other parameters"):
        store.submit("m:f", '{"a": 2}', "k")
    with pytest.raises(KeyConflict, match="another target"):
        store.submit("m:g", '{"a": 1}', "k")
    other, created = store.submit("m:f", '{"a": 2}')  # no key: a hash of target and parameters
    assert created and other != job_id
    store.submit_many([("m:f", "1", "b1"), ("m:f", "2", "b2"), ("m:f", '{"a": 1}', "k")])
    assert store.counts()["pending"] == 4


def test_submit_many_records_all_or_none_even_when_it_contradicts_itself(store: Store) -> None:
    with pytest.raises(KeyConflict):
        store.submit_many([("m:f", "1", "fresh"), ("m:f", '{"b": 1}', "dup"), ("m:f", '{"b": 2}', "dup")])
    assert store.job_by_key("fresh") is None and store.job_by_key("dup") is None
    assert store.counts()["pending"] == 0
    assert [created for _, created in store.submit_many([("m:f", "1", "same"), ("m:f", "1", "same")])] == [True, False]


def test_claim_takes_jobs_oldest_first_and_records_the_childs_pid(store: Store) -> None:
    first, _ = store.submit("m:f", "1", "first")
    store.submit("m:f", "2", "second")
    job, attempt_id = claim(store, pid=777)
    assert (job.id, job.key, job.attempts, job.failures) == (first, "first", 0, 0)
    row = store.job_row(first)
    assert row is not None and row["state"] == "running" and row["attempts"] == 1
    [open_attempt] = store.open_attempts()
    assert (open_attempt.attempt_id, open_attempt.pid, open_attempt.n, open_attempt.key) == (attempt_id, 777, 1,
                                                                                               "first")
    assert claim(store)[0].key == "second"
    assert store.claim(1, 1, None) is None  # nothing left
    assert store.counts()["running"] == 2


def test_an_outcome_is_recorded_once_with_its_callback_owed(store: Store) -> None:
    job_id, _ = store.submit("m:f", "null", "k")
    job, attempt_id = claim(store)
    recorded, callback_id = end(store, attempt_id, job_id, result={"x": 1}, reason="its reason", max_rss_kb=2048)
    assert recorded and callback_id is not None
    assert end(store, attempt_id, job_id) == (False, None)  # the second report of the same end
    row = store.job_row(job_id)
    assert row is not None and row["state"] == "finished" and json.loads(row["result"]) == {"x": 1}
    assert store.owed_callbacks() == [(callback_id, job_id, 1, "on_finished")]
    # What the callback is handed, read as its run is counted: the job's row and its attempt's end.
    started = store.start_callback(callback_id, job_id, 1)
    assert started is not None
    handed, reason, max_rss_kb = started
    assert handed == row and (reason, max_rss_kb) == ("its reason", 2048)
    store.callback_done(callback_id, None)
    assert store.owed_callbacks() == []
    assert store.open_attempts() == []
    assert [a["outcome"] for a in store.attempts_of(job_id)] == ["finished"]


def test_callbacks_done_together_are_each_done(store: Store) -> None:
    """The settler's group commit: several callbacks marked done in one call."""
    owed = []
    for key in ("a", "b", "c"):
        job_id, _ = store.submit("m:f", "null", key)
        _job, attempt_id = claim(store)
        owed.append(end(store, attempt_id, job_id)[1])
    first, second, third = owed
    assert first is not None and second is not None and third is not None
    for callback_id in (first, second):
        store.callback_started(callback_id)
    results = store.callbacks_done([(first, None), (second, "Traceback ...\nValueError: boom")])
    assert len(results) == 2 and False not in results  # (a shared store: both still this master's)
    assert [row[0] for row in store.owed_callbacks()] == [third]
    assert store.callbacks_done([]) == []
    # With the finals the master holds before their acks, in the same commit.
    job_id, _ = store.submit("m:f", "null", "d")
    _job, attempt_id = claim(store)
    store.callback_started(third)
    assert store.hold_finals([(attempt_id, "{}")], [(third, None)]) in ([None], [True])
    assert store.owed_callbacks() == []
    assert [a.final for a in store.open_attempts()] == ["{}"]
    assert store.hold_finals([(attempt_id, "{}")]) == []


def test_a_failed_attempt_puts_the_job_back_after_its_delay(store: Store) -> None:
    job_id, _ = store.submit("m:f", "null", "k")
    _job, attempt_id = claim(store)
    assert end(store, attempt_id, job_id, outcome="error", job_state="pending", callback=None, delay=30.0) == (
        True, None)
    assert store.claim(1, 1, None) is None  # not before its delay
    due = store.next_due_in()
    assert due is not None and 25 < due <= 30
    row = store.job_row(job_id)
    assert row is not None and row["failures"] == 1 and row["state"] == "pending"
    store.submit("m:f", "2", "now")
    assert claim(store)[0].key == "now"


def test_a_job_that_cannot_start_fails_with_its_callback_owed(store: Store) -> None:
    job_id, _ = store.submit("m:missing", "null", "k")
    callback_id = store.fail_without_attempt(job_id, "no such job")
    assert callback_id is not None
    assert store.fail_without_attempt(job_id, "no such job") is None  # owed once
    row = store.job_row(job_id)
    assert row is not None and (row["state"], row["outcome"], row["error"]) == ("failed", "error", "no such job")
    assert store.owed_callbacks() == [(callback_id, job_id, 0, "on_failed")]


def test_pending_count_counts_only_the_jobs_waiting(store: Store) -> None:
    store.submit_many([("m:f", str(i), f"k{i}") for i in range(5)])
    job, attempt_id = claim(store)  # running
    end(store, attempt_id, job.id, callback=None)  # finished
    claim(store)  # running
    assert store.cancel_pending("k4") == "pending"
    assert store.pending_count() == store.counts()["pending"] == 2


def test_retry_and_cancel(store: Store) -> None:
    job_id, _ = store.submit("m:f", "null", "k")
    store.submit("m:f", "2", "waiting")
    with pytest.raises(RetryRefused, match="only failed or cancelled"):
        store.retry(["k"])
    _job, attempt_id = claim(store)
    end(store, attempt_id, job_id, outcome="error", job_state="failed", callback="on_failed")
    with pytest.raises(RetryRefused, match="callback owed"):
        store.retry(["k"])
    [(callback_id, *_rest)] = store.owed_callbacks()
    store.callback_done(callback_id, None)
    assert store.retry(None) == ["k"]
    row = store.job_row(job_id)
    assert row is not None and (row["state"], row["failures"]) == ("pending", 0)
    assert store.cancel_pending("waiting") == "pending"
    assert store.cancel_pending("nothing") is None
    assert store.job_by_key("waiting")["state"] == "cancelled"  # type: ignore[index]
    # Its on_failed is owed with the cancel (attempt 0: it never ran); a retry before any master
    # started it withdraws the cancel and that call with it.
    [(_callback_id, waiting_id, number, kind)] = store.owed_callbacks()
    assert (waiting_id, number, kind) == (store.job_by_key("waiting")["id"], 0, "on_failed")  # type: ignore[index]
    assert store.retry(["waiting"]) == ["waiting"]
    assert store.owed_callbacks() == []
    job, attempt_id = claim(store)
    assert job.key == "k" and job.attempts == 1  # numbered on
    end(store, attempt_id, job_id, n=2)
    assert [a["n"] for a in store.attempts_of(job_id)] == [1, 2]


def test_reads_for_status_and_the_operator(store: Store) -> None:
    job_id, _ = store.submit("m:f", '{"p": 1}', "k")
    store.submit("m:g", "null", "other")
    _job, attempt_id = claim(store, pid=999)
    [running, pending] = list(store.status_rows())
    assert (running["key"], running["state"], running["pid"], running["params"]) == ("k", "running", 999, {"p": 1})
    assert (pending["key"], pending["state"], pending["pid"]) == ("other", "pending", None)
    assert store.targets_in_use() == [("m:f", 0, 1), ("m:g", 1, 0)]
    end(store, attempt_id, job_id, outcome="crashed", job_state="failed", callback=None)
    [failure] = store.recent_failures(5)
    assert (failure["key"], failure["outcome"]) == ("k", "crashed")
    rows, total = store.list_jobs(state="failed", target=None, since=None, limit=10)
    assert total == 1 and rows[0]["key"] == "k"
    assert store.batch_counts(0.0)["failed"] == 1
    store.record_event("master_start", 1, 10, "app")
    store.record_event("replaced", 2, 10, "app")
    assert store.count_events("replaced") == 1
    first, reload = store.master_times()
    assert first is not None and reload is not None and reload >= first
    store.set_meta(generation=3)
    assert store.meta("generation") == 3 and store.meta("missing", "d") == "d"
    jobs, attempts, unstarted = store.timeline_recent(10)
    assert [a["job_id"] for a in attempts] == [job_id] and unstarted == 1  # "other", never started
    assert len(jobs) == 1 and len(store.timeline_events()) == 2


def test_prune_keeps_what_is_not_ended_or_still_owes_a_callback(store: Store) -> None:
    done_id, _ = store.submit("m:f", "1", "done")
    owing_id, _ = store.submit("m:f", "2", "owing")
    store.submit("m:f", "3", "pending")
    for _ in range(2):
        job, attempt_id = claim(store)
        recorded, callback_id = end(store, attempt_id, job.id)
        if job.id == done_id:
            assert callback_id is not None
            store.callback_done(callback_id, None)
    removed = store.prune(finished_before=time.time() + 60, failed_before=None)
    assert removed["jobs"] == 1 and removed["attempts"] == 1
    assert store.job_row(done_id) is None and store.job_row(owing_id) is not None
    assert store.counts()["pending"] == 1


def test_prune_keeps_the_last_master_start_and_what_followed_it(store: Store) -> None:
    for kind, generation in (("master_start", 1), ("replaced", 2), ("master_start", 1), ("replaced", 2)):
        store.record_event(kind, generation, 4242)
    before = store.master_times()
    assert before[0] is not None and before[1] is not None
    removed = store.prune(finished_before=time.time() + 60, failed_before=None)
    assert removed["events"] == 2  # the first master's life only
    assert store.master_times() == before


def test_checkpoints_keep_the_newest_of_the_latest_attempt_and_retry_fresh_clears_them(store: Store) -> None:
    job_id, _ = store.submit("m:f", "{}", "k")
    _job, first = claim(store)
    store.save_checkpoints([(job_id, 1, 5, '{"at":5}')])
    store.save_checkpoints([(job_id, 1, 4, '{"at":4}')])  # older: an outbox file read after it
    assert store.checkpoint_of(job_id) == '{"at":5}'
    store.save_progress([(first, '[3,10,"x"]')])
    end(store, first, job_id, outcome="signalled", job_state="pending", callback=None)
    assert [job.checkpoint for job in store.pending(5)] == ['{"at":5}']  # the next attempt's, with the job
    job, second = claim(store)
    assert job.checkpoint == '{"at":5}'  # read by the claim: a shared store's one round trip
    store.save_checkpoints([(job_id, 1, 9, '{"at":"late"}')])  # the first attempt's, after the second began
    assert store.checkpoint_of(job_id) == '{"at":5}'
    store.save_checkpoints([(job_id, 2, 1, '{"at":6}')])
    assert store.checkpoint_of(job_id) == '{"at":6}'
    assert [a["progress"] for a in store.attempts_of(job_id)] == ['[3,10,"x"]', None]
    end(store, second, job_id, outcome="error", job_state="failed", callback=None, n=2)
    store.retry(["k"])
    assert store.checkpoint_of(job_id) == '{"at":6}'  # a retry resumes
    job, third = claim(store)
    assert job.checkpoint == '{"at":6}'
    end(store, third, job_id, outcome="error", job_state="failed", callback=None, n=3)
    store.retry(["k"], fresh=True)
    job = store.job_by_key("k")
    assert job is not None and job["checkpoint"] is None and store.checkpoint_of(job_id) is None


def test_pending_lists_the_due_jobs_oldest_first_and_begin_attempt_starts_one(store: Store) -> None:
    """The two-step start (pending, then begin_attempt after the fork) that
    the master uses with a store that is not shared."""
    first, _ = store.submit("m:f", "1", "first")
    second, _ = store.submit("m:f", "2", "second")
    store.submit("m:f", "3", "third")
    assert [job.key for job in store.pending(2)] == ["first", "second"]
    [job] = store.pending(1)
    assert (job.id, job.target, job.params, job.attempts, job.failures) == (first, "m:f", "1", 0, 0)
    attempt_id = store.begin_attempt(job, 1, 555, 123456)
    assert attempt_id > 0
    row = store.job_row(first)
    assert row is not None and (row["state"], row["attempts"]) == ("running", 1)
    [open_attempt] = store.open_attempts()
    assert (open_attempt.attempt_id, open_attempt.job_id, open_attempt.n, open_attempt.pid,
            open_attempt.start_time, open_attempt.final) == (attempt_id, first, 1, 555, 123456, None)
    assert [job.key for job in store.pending(5)] == ["second", "third"]  # a running job is not pending
    end(store, attempt_id, first, outcome="error", job_state="pending", callback=None, delay=60.0)
    assert [job.key for job in store.pending(5)] == ["second", "third"]  # nor one waiting out its backoff
    [again] = store.pending(1)
    assert again.id == second


def test_a_held_final_stays_on_its_open_attempt_until_the_outcome_is_recorded(store: Store) -> None:
    job_id, _ = store.submit("m:f", "null", "k")
    other_id, _ = store.submit("m:f", "2", "other")
    _job, attempt_id = claim(store)
    _other, other_attempt = claim(store)
    final = json.dumps({"kind": "finished", "result": 7})
    store.hold_finals([(attempt_id, final)])
    assert {a.attempt_id: a.final for a in store.open_attempts()} == {attempt_id: final, other_attempt: None}
    end(store, attempt_id, job_id, result=7)
    store.hold_finals([(attempt_id, final), (other_attempt, "{}")])  # an ended attempt holds nothing any more
    assert [(a.attempt_id, a.final) for a in store.open_attempts()] == [(other_attempt, "{}")]
    assert other_id != job_id


def test_attempt_end_reads_the_reason_and_memory_of_one_attempt(store: Store) -> None:
    job_id, _ = store.submit("m:f", "null", "k")
    _job, attempt_id = claim(store)
    end(store, attempt_id, job_id, outcome="crashed", job_state="pending", callback=None, reason="SIGSEGV",
        max_rss_kb=2048)
    assert store.attempt_end(job_id, 1) == ("SIGSEGV", 2048)
    assert store.attempt_end(job_id, 2) == (None, None)  # no such attempt


def test_a_cancel_under_way_is_noted_on_the_open_attempt(store: Store) -> None:
    store.submit("m:f", "null", "k")
    _job, attempt_id = claim(store)
    store.request_cancel(attempt_id)
    [open_attempt] = store.open_attempts()
    assert open_attempt.cancel_requested


def test_a_kill_under_way_is_noted_on_the_open_attempt(store: Store) -> None:
    """For a master that adopts the attempt mid-kill (a replacement, a restart): it ends it for that reason."""
    store.submit("m:f", "null", "k")
    _job, attempt_id = claim(store)
    store.note_kill(attempt_id, KillReason.STALL_TIMEOUT)
    [open_attempt] = store.open_attempts()
    assert open_attempt.ending == KillReason.STALL_TIMEOUT and not open_attempt.cancel_requested


def test_probe_write_passes_on_a_store_that_takes_writes_and_changes_no_job(store: Store) -> None:
    store.submit("m:f", "null", "k")
    before = store.counts()
    assert store.probe_write() is None
    assert store.counts() == before and store.pending_count() == 1


def test_a_store_is_its_own_context_manager_and_closes_once_or_twice(store: Store) -> None:
    store.submit("m:f", "null", "k")
    with store as same:
        assert same is store and same.counts()["pending"] == 1
    store.close()  # closed already by the `with`: harmless


def test_the_contract_calls_every_method_of_the_interface() -> None:
    """A method added to base.Store without a case here fails this test."""
    members = {name for name, _ in inspect.getmembers(Store, inspect.isfunction) if not name.startswith("_")}
    cases = (Path(__file__), Path(__file__).with_name("test_scheduling_contract.py"))  # (the cases of issue 20)
    called = {node.func.attr for case in cases for node in ast.walk(ast.parse(case.read_text()))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "store"}
    assert members - called == set()


def test_jobs_by_a_key_prefix_are_those_whose_key_starts_with_it_and_no_pattern(store: Store) -> None:
    """The dashboard's search: a prefix, not a pattern (% and _ are letters of a key), in both stores."""
    for key in ("feed-1", "feed-10", "feed_2", "feedback", "f%eed", "other", "feed-\U0010ffff", "z"):
        store.submit("m:f", "{}", key)

    def keys(prefix: str) -> tuple[list[str], int]:
        rows, total = store.list_jobs(state=None, target=None, since=None, limit=10, key_prefix=prefix)
        return sorted(row["key"] for row in rows), total

    assert keys("feed-") == (["feed-1", "feed-10", "feed-\U0010ffff"], 3)
    assert keys("feed_") == (["feed_2"], 1)
    assert keys("f%") == (["f%eed"], 1)
    assert keys("feed-\U0010ffff") == (["feed-\U0010ffff"], 1)
    assert keys("nothing") == ([], 0) and keys("\ud800") == ([], 0)  # a lone surrogate: no job has it
    rows, total = store.list_jobs(state="failed", target=None, since=None, limit=10, key_prefix="feed")
    assert (rows, total) == ([], 0)  # with the other filters


# -- batches (store/batches.py): the count moves with each member's final state, in its transaction --


def batch_callbacks(store: Store) -> list[tuple[int, int, int, str]]:
    return [owed for owed in store.owed_callbacks() if owed[3] == KIND]


def test_a_batch_completes_in_the_transaction_of_its_last_outcome(store: Store) -> None:
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


def test_the_last_outcome_owes_the_callback_and_a_retry_reopens_the_count(store: Store) -> None:
    store.submit_to_batch("b", [("m:f", "1", "ok"), ("m:f", "2", "bad")])
    assert store.close_batch("b") == "closed"
    ok, ok_attempt = claim(store)
    bad, bad_attempt = claim(store)
    end(store, ok_attempt, ok.id, callback=None)
    assert store.batches(name="b")[0]["remaining"] == 1 and batch_callbacks(store) == []
    end(store, bad_attempt, bad.id, outcome="error", job_state="failed", callback=None)
    [(callback_id, job_id, attempt, kind)] = batch_callbacks(store)
    assert (job_id, attempt) == (bad.id, 1)  # on the member whose end completed the batch
    # The master starts it from here; a shared store's master hears of it by NOTIFY instead.
    assert store.take_owed_batch_callbacks() == ([] if store.shared else [(callback_id, bad.id, 1, KIND)])
    assert store.take_owed_batch_callbacks() == []
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
    assert [(job["key"], job["state"], job["attempts"]) for job in store.batch_jobs(batch["id"])] == [
        ("ok", "finished", 1), ("bad", "finished", 2)]


def test_prune_keeps_the_jobs_of_a_batch_until_it_is_complete_and_called(store: Store) -> None:
    store.submit_to_batch("b", [("m:f", "1", "early"), ("m:f", "2", "late")])
    store.submit("m:f", "3", "newest")  # (prune keeps the newest job in any case)
    early, early_attempt = claim(store)
    end(store, early_attempt, early.id, callback=None)
    later = time.time() + 60
    assert store.prune(finished_before=later, failed_before=later)["jobs"] == 0  # the batch is open
    assert store.close_batch("b") == "closed"
    assert store.prune(finished_before=later, failed_before=later)["jobs"] == 0  # closed, one job to go
    last, last_attempt = claim(store)
    end(store, last_attempt, last.id, callback=None)
    # Its callback hangs on the last member, and its counts come from all of them.
    [(callback_id, job_id, _attempt, _kind)] = batch_callbacks(store)
    assert job_id == last.id and store.batches(name="b")[0]["counts"] == {"finished": 2}
    # Complete, but its callback has not run: it reads their counts and jobs when it does.
    assert store.prune(finished_before=later, failed_before=later)["jobs"] == 0
    store.callback_started(callback_id)
    store.callback_done(callback_id, None)
    assert store.prune(finished_before=later, failed_before=later)["jobs"] == 2
    assert store.batches(name="b")[0]["state"] == "complete"


def test_prune_keeps_the_newest_job_so_that_no_id_is_given_twice(store: Store) -> None:
    first, _ = store.submit("m:f", "1", "first")
    newest, _ = store.submit("m:f", "2", "newest")
    for _ in range(2):
        job, attempt_id = claim(store)
        end(store, attempt_id, job.id, callback=None)
    assert store.prune(finished_before=time.time() + 60, failed_before=None)["jobs"] == 1
    assert store.job_row(first) is None and store.job_row(newest) is not None
    after, _ = store.submit("m:f", "3", "after")
    assert after > newest


def test_batches_are_listed_newest_first_up_to_a_limit(store: Store) -> None:
    for name in ("a", "b", "c"):
        store.submit_to_batch(name, [])
    assert [b["name"] for b in store.batches(limit=2)] == ["c", "b"]
    assert [b["name"] for b in store.batches()] == ["c", "b", "a"]


def test_a_delayed_or_ranked_member_is_work_the_batch_still_has(store: Store) -> None:
    later = time.time() + 3600
    [(delayed_id, created), (ranked_id, _)] = store.submit_to_batch(
        "b", [("m:f", "1", "delayed", later, 0), ("m:f", "2", "ranked", None, 7)])
    assert created
    with pytest.raises(KeyConflict, match="another priority"):
        store.submit_to_batch("b", [("m:f", "2", "ranked", None, 1)])
    assert store.close_batch("b") == "closed"
    job, attempt_id = claim(store)
    assert job.id == ranked_id  # the delayed one is not due
    end(store, attempt_id, job.id, callback=None)
    [batch] = store.batches(name="b")
    assert (batch["state"], batch["remaining"], batch["counts"]) == ("closed", 1, {"finished": 1, "scheduled": 1})
    assert batch_callbacks(store) == [] and store.job_row(delayed_id) is not None
