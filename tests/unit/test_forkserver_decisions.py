"""When the master must not use a fork server (forkserver.refusal): threads
at import, seen by threading or by /proc/self/task."""

import pytest

from phoenix.child.forkserver import refusal


@pytest.mark.parametrize(("names", "tasks", "expected"), [
    (["MainThread"], 1, None),
    (["MainThread", "cache-refresher"], 2, "the app started 1 thread(s) at import (cache-refresher)"),
    (["MainThread", "a", "b"], 3, "the app started 2 thread(s) at import (a, b)"),
    # A thread C code started: /proc/self/task sees it, threading does not.
    (["MainThread"], 2, "the app started 1 thread(s) at import (started outside Python's threading module)"),
    (["MainThread", "a"], 3, "the app started 2 thread(s) at import (a)"),
])
def test_refusal(names, tasks, expected):
    assert refusal(names, tasks) == expected
