"""Running on_finished / on_failed callbacks in the master without ever
holding up heartbeat handling: a small thread pool runs them, a pipe wakes the
loop when one ends, and the loop alone writes the journal.

A callback cannot be killed (it is a thread), so one that outlives
`callback_timeout` is logged, recorded as done with a timeout error, and
left to finish on its own; its thread stays busy until it does. The threads
are daemon threads (ThreadPoolExecutor's are not, and the interpreter would
wait for a hung callback at exit), so a stop is never held up by one."""

from __future__ import annotations

import os
import queue
import threading
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

from phoenix.linux.clock import SYSTEM, Clock
from phoenix.linux.untrusted import cut_traceback


@dataclass
class RunningCallback:
    callback_id: int
    job_key: str
    kind: str
    started: float
    future: Future[str | None]


class CallbackRunner:
    def __init__(self, threads: int, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self.queue: queue.SimpleQueue[
            tuple[Future[str | None], list[Callable[..., Any]], tuple[Any, ...]] | None
        ] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._work, name=f"phoenix-callback-{i}", daemon=True)
                        for i in range(threads)]
        for thread in self.threads:
            thread.start()
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.running: dict[int, RunningCallback] = {}

    def start(self, callback_id: int, job_key: str, kind: str, functions: list[Callable[..., Any]], *args: Any) -> None:
        future: Future[str | None] = Future()
        self.queue.put((future, functions, args))
        self.running[callback_id] = RunningCallback(callback_id, job_key, kind, self.clock.monotonic(), future)
        future.add_done_callback(self._wake)

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            future, functions, args = item
            future.set_result(self._call_all(functions, args))

    @staticmethod
    def _call_all(functions: list[Callable[..., Any]], args: tuple[Any, ...]) -> str | None:
        """Run each registered function; the tracebacks of those that raised, or None."""
        errors = []
        for function in functions:
            try:
                function(*args)
            except Exception as exc:  # noqa: BLE001 - a user's callback must never take the master down
                errors.append(cut_traceback("".join(traceback.format_exception(exc))))  # bounded, as a job's
        return "\n".join(errors) or None

    def _wake(self, _future: Future[str | None]) -> None:
        try:
            os.write(self.wake_write, b"x")
        except BlockingIOError:
            pass  # the loop is already due to wake

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def finished(self) -> list[tuple[RunningCallback, str | None]]:
        done = [rc for rc in self.running.values() if rc.future.done()]
        for rc in done:
            del self.running[rc.callback_id]
        return [(rc, rc.future.result()) for rc in done]

    def overdue(self, timeout: float, now: float) -> list[RunningCallback]:
        late = [rc for rc in self.running.values() if now - rc.started > timeout]
        for rc in late:
            del self.running[rc.callback_id]
        return late

    def next_deadline(self, timeout: float) -> float | None:
        return min((rc.started + timeout for rc in self.running.values()), default=None)

    def wait_all(self, timeout: float) -> None:
        deadline = self.clock.monotonic() + timeout
        for rc in list(self.running.values()):
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return
            try:
                rc.future.exception(timeout=remaining)
            except TimeoutError:
                return

    def shutdown(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        os.close(self.wake_read)
        os.close(self.wake_write)
