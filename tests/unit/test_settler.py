"""The settler in-process: a callback that ran, whose `done` the store has not
taken yet (an outage; the write waits to be replayed), is never started again
by a look for owed callbacks (a lease renewal, the store's return). On the
shared store, a storm of killed sessions ran one callback 4 times."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from phoenix.master.settler import CallbackSettler


class Running:
    def __init__(self, callback_id: int) -> None:
        self.callback_id, self.job_key, self.kind, self.started = callback_id, "k", "on_finished", 0.0


class Store:
    """Owes callback 6 until a `done` is taken; the first `done` fails (a killed session)."""

    def __init__(self) -> None:
        self.done: list[int] = []
        self.fail_next_done = True
        self.started: list[int] = []

    def owed_callbacks(self) -> list[tuple[int, int, int, str]]:
        return [] if 6 in self.done else [(6, 1, 1, "on_finished")]

    def callback_done(self, callback_id: int, error: str | None) -> bool:
        if self.fail_next_done:
            self.fail_next_done = False
            raise ConnectionError("terminating connection due to administrator command")
        self.done.append(callback_id)
        return True

    def job_row(self, job_id: int) -> dict[str, Any]:
        return {"key": "k", "target": "m:f", "params": "{}", "outcome": "finished", "error": None, "result": "1"}

    def attempt_end(self, job_id: int, number: int) -> tuple[None, None]:
        return None, None

    def callback_started(self, callback_id: int) -> bool:
        self.started.append(callback_id)
        return True

    def take_owed_batch_callbacks(self) -> list[tuple[int, int, int, str]]:
        return []


def test_a_callback_whose_done_waits_for_the_store_is_not_run_again() -> None:
    store = Store()
    replays: list[Any] = []

    def guarded(operation: Any, retry: bool = False) -> None:
        try:
            operation()
        except ConnectionError:
            replays.append(operation)  # as the outage machinery keeps a write to replay

    finished = [(Running(6), None)]
    runner = SimpleNamespace(running={}, finished=lambda: [finished.pop()] if finished else [],
                             overdue=lambda timeout, now: [], start=lambda *args: store.started.append(-1))
    host = SimpleNamespace(app=SimpleNamespace(finished_callbacks=[print], failed_callbacks=[]), journal=store,
                           callbacks=runner, config=SimpleNamespace(callback_timeout=5.0), counters=None,
                           histograms=None, guarded=guarded, callbacks_held=lambda: False)
    settler = CallbackSettler(host)  # type: ignore[arg-type]
    settler.settle()  # it ran; its done fails and waits to be replayed
    assert replays and store.done == []
    settler.run_owed()  # a lease renewal looks for owed callbacks: still owed in the store
    assert store.started == []  # not started again
    replays.pop()()  # the store is back: the write is replayed
    assert store.done == [6]
    settler.run_owed()
    assert store.started == []
