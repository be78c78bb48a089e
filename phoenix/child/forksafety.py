"""What an app sets up at import that a forked job child cannot use as it is.

A child is a copy of the process that imported the app (the fork server, or
the master): it gets every object, but only the forking thread. Some objects
then lie about the state of the world:

- a `concurrent.futures.ThreadPoolExecutor` used at import believes its idle
  worker threads exist, so a job's `submit()` queues work that no thread will
  ever run (the job hangs while its beat thread keeps it "alive");
- numpy's global random state (`numpy.random.seed(42)`, or just the entropy
  it drew at import) is the same in every child: every job draws the same
  numbers (Python's own `random` reseeds itself after a fork; numpy does not);
- a `ProcessPoolExecutor` or `multiprocessing.Pool` made at import has
  processes that are not the child's own to use.

`inspect()` runs once after the app's import (in the master and in the fork
server) and finds these; `notices()` says each in one line for the master's
log; `after_fork()` runs in every job child before its job, and repairs what
can be repaired: a fresh, empty thread pool in place of each copied one, and
numpy's global state reseeded from the system's entropy. The rest is in
docs/fork-safety.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Findings:
    thread_pools: list[Any] = field(default_factory=list)  # ThreadPoolExecutors with worker threads
    process_pools: int = 0  # ProcessPoolExecutors with a running manager
    numpy_random: bool = False  # numpy.random imported: its global state is drawn already
    multiprocessing_pools: int = 0  # multiprocessing.Pool or .pool.ThreadPool: their handler threads run

    def notices(self) -> list[tuple[str, str]]:
        """(what, what Phoenix does about it) for each finding."""
        said = []
        if self.thread_pools:
            names = ", ".join(sorted({getattr(pool, "_thread_name_prefix", "") or "ThreadPoolExecutor"
                                      for pool in self.thread_pools}))
            said.append((f"the app used {len(self.thread_pools)} concurrent.futures thread pool(s) at import "
                         f"({names}), whose worker threads a forked child does not have",
                         "each job child gets them back empty (new workers start on its first submit); "
                         "see docs/fork-safety.md"))
        if self.process_pools:
            said.append((f"the app started {self.process_pools} concurrent.futures process pool(s) at import, "
                         "whose processes a job child cannot use (they are not its own)",
                         "a job that submits to one fails or hangs: make the pool inside the job; "
                         "see docs/fork-safety.md"))
        if self.multiprocessing_pools:
            said.append((f"the app made {self.multiprocessing_pools} multiprocessing pool(s) (Pool or ThreadPool) at "
                         "import, whose threads and workers a forked child does not have",
                         "a job that uses one waits forever (its tasks are never handed out): make the pool inside "
                         "the job; see docs/fork-safety.md"))
        if self.numpy_random:
            said.append(("numpy.random's global state was set when the app imported numpy, and would be the same "
                         "in every job child",
                         "it is reseeded from the system's entropy in each job child (as Python's random is): "
                         "seed inside the job for numbers that repeat; see docs/fork-safety.md"))
        return said


_found = Findings()


def inspect() -> Findings:
    """Find, in this process (after the app's import), what a forked child
    would inherit broken; remembered for `after_fork`."""
    global _found
    _found = Findings(_thread_pools(), _process_pools(), "numpy.random" in sys.modules, _multiprocessing_pools())
    return _found


def _thread_pools() -> list[Any]:
    """ThreadPoolExecutors with worker threads: the module keeps a map of
    each worker thread to its executor's queue, and each worker holds a weak
    reference to its executor (CPython 3.9 to 3.13's layout; anything else
    is not recognised, and left as it is)."""
    module = sys.modules.get("concurrent.futures.thread")
    if module is None:
        return []
    pools: dict[int, Any] = {}
    for thread in list(getattr(module, "_threads_queues", {}).keys()):
        args = getattr(thread, "_args", ())
        reference = args[0] if args else None
        pool = reference() if callable(reference) else None
        usable = pool is not None and not getattr(pool, "_shutdown", True)  # a shut-down pool refuses work anyway
        if usable and hasattr(pool, "_threads") and hasattr(pool, "_idle_semaphore"):
            pools[id(pool)] = pool
    return list(pools.values())


def _process_pools() -> int:
    module = sys.modules.get("concurrent.futures.process")
    return len(getattr(module, "_threads_wakeups", {})) if module is not None else 0


def _multiprocessing_pools() -> int:
    """multiprocessing pools alive: each runs one task-handler thread (its
    target is Pool._handle_tasks), which a child does not have."""
    if "multiprocessing.pool" not in sys.modules:
        return 0
    import threading

    return sum(1 for thread in threading.enumerate()
               if getattr(getattr(thread, "_target", None), "__qualname__", "") == "Pool._handle_tasks")


def after_fork() -> None:
    """In a job child, before its job: repair what `inspect` found."""
    if _found.thread_pools:
        _renew_thread_pools(_found.thread_pools)
    if _found.numpy_random:
        _reseed_numpy()


def _renew_thread_pools(pools: list[Any]) -> None:
    import queue
    import threading

    module = sys.modules["concurrent.futures.thread"]
    module._threads_queues.clear()  # the parent's threads: none of them is here
    for pool in pools:
        # Work queued in the parent is the parent's (its futures wait there);
        # the copy's locks may have been held by a thread that is not here.
        pool._threads = set()
        pool._idle_semaphore = threading.Semaphore(0)
        pool._shutdown_lock = threading.Lock()
        pool._work_queue = queue.SimpleQueue()


def _reseed_numpy() -> None:
    numpy_random: Any = sys.modules.get("numpy.random")
    seed = getattr(numpy_random, "seed", None)
    if seed is not None:
        seed()  # no argument: fresh entropy from the system
