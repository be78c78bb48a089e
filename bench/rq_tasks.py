"""RQ's task for the throughput figure, alone in a module that imports
nothing. RQ's default worker forks a work horse per job, and the horse
imports the task's module afresh: the task used to live in bench.apps,
whose import (phoenix.App, its config, tomllib, inspect, dataclasses: some
40 ms in a fresh interpreter) cost every RQ job about 15 ms of CPU on top
of its 17 ms, which no other contender pays (Phoenix and the Pool import
their task once, before forking)."""


def noop() -> None:
    """RQ's job: nothing."""
    return None
