"""The store seam in-process: one list of job states used everywhere, the
capabilities the master checks instead of class names, and a command's
reads (the timeline) drawn from the in-memory store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from phoenix.cli import report
from phoenix.cli.main import main
from phoenix.store.base import FileStore, JobState, SharedStore
from phoenix.store.memory import MemoryStore
from phoenix.store.open import open_store


def test_every_list_of_job_states_is_the_stores_own() -> None:
    assert sorted(report.STATE_FILTERS) == sorted(JobState)  # each state has its filter on the page, once
    jobs = main.commands["jobs"]
    [state_option] = [p for p in jobs.params if p.name == "state"]
    assert isinstance(state_option.type, click.Choice)
    assert list(state_option.type.choices) == [str(state) for state in JobState]
    assert list(MemoryStore().counts()) == [str(state) for state in JobState]


def test_the_master_asks_a_store_what_it_can_do_not_what_it_is(tmp_path: Path) -> None:
    with open_store("sqlite", tmp_path / "journal.db") as journal:
        assert isinstance(journal, FileStore) and not isinstance(journal, SharedStore) and not journal.shared
    memory = MemoryStore()
    assert not isinstance(memory, FileStore) and not isinstance(memory, SharedStore) and not memory.shared


def test_the_timeline_is_drawn_from_any_store() -> None:
    clock = [1000.0]
    store = MemoryStore(now=lambda: clock[0])
    store.record_event("master_start", 1, 10)
    for key, outcome, state in (("done", "finished", "finished"), ("broken", "error", "failed")):
        job_id, _ = store.submit("m:f", json.dumps(key), key)
        claimed = store.claim(1, 10, None)
        assert claimed is not None
        clock[0] += 2.5
        store.end_attempt(claimed[1], job_id, outcome=outcome, reason=None, error=None, result_json=None,
                          max_rss_kb=None, job_state=state, counts_as_failure=state == "failed", callback=None,
                          attempt_n=1)
    store.submit("m:f", "null", "cancelled-early")
    store.cancel_pending("cancelled-early")
    page = report.build(store, "Phoenix timeline: memory")
    assert page.count('<rect class="attempt ') == 2
    assert 'data-job="done"' in page and 'data-job="broken"' in page
    assert 'id="show-cancelled"' in page
