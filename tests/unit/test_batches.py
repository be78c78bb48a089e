"""Batches in-process: names refused in one line, and the settler hands
`on_batch_complete` a BatchInfo of the batch whose member the callback row names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from phoenix.app import BatchInfo
from phoenix.master.settler import CallbackSettler
from phoenix.store.batches import KIND, BatchRefused, check_name
from phoenix.testing import FakeClock


@pytest.mark.parametrize(("name", "says"), [("", "non-empty"), ("  ", "non-empty"), ("x" * 201, "over the limit"),
                                            ("a\nb", "control characters"), ("a\udcffb", "control characters")])
def test_a_bad_batch_name_is_refused_by_what_is_wrong(name: str, says: str) -> None:
    with pytest.raises(BatchRefused, match=says) as refused:
        check_name(name)
    assert "\n" not in str(refused.value)


def test_a_good_batch_name_passes() -> None:
    check_name("feeds-2026-12-07")


def test_the_settler_calls_on_batch_complete_with_the_batch_and_its_final_counts() -> None:
    started: list[tuple[Any, ...]] = []
    store = SimpleNamespace(
        job_row=lambda job_id: {"batch_id": 7},
        batches=lambda batch_id: [{"id": batch_id, "name": "feeds", "completions": 1,
                                   "counts": {"finished": 10, "failed": 2}}],
        batch_jobs=lambda batch_id: [{"key": "feeds-0", "state": "finished"}],
        callback_started=lambda callback_id: True,
    )
    runner = SimpleNamespace(running={}, start=lambda *args: started.append(args))
    app = SimpleNamespace(batch_callbacks=[print])
    settler = CallbackSettler(app, lambda: store, runner, lambda: None, None, FakeClock(),  # type: ignore[arg-type]
                              lambda operation, retry=False: operation())
    settler.start(5, 3, 1, KIND)
    [(callback_id, label, kind, functions, info)] = started
    assert (callback_id, label, kind, functions) == (5, "batch:feeds", KIND, [print])
    assert isinstance(info, BatchInfo)
    assert (info.id, info.name, info.counts, info.completion) == (7, "feeds", {"finished": 10, "failed": 2}, 1)
    assert info.jobs() == [{"key": "feeds-0", "state": "finished"}]
