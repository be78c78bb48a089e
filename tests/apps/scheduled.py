"""Jobs for the scheduling tests (tests/test_scheduling.py): each run appends
one JSON line to $PHOENIX_TEST_RUNS (what ran, when, in which process)."""

import json
import os
import time

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=5.0, kill_grace=1.0, workers=1)


def record(kind, params):
    job = phoenix.current_job()
    with open(os.environ["PHOENIX_TEST_RUNS"], "a") as f:
        f.write(json.dumps({"kind": kind, "params": params, "at": time.time(), "pid": os.getpid(),
                            "key": job.key, "attempt": job.attempt}) + "\n")


@app.job
def note(params):
    record("note", params)


@app.job
def hold(params):
    """Keeps its slot until the file params["until"] exists."""
    while not os.path.exists(params["until"]):
        time.sleep(0.02)
    record("hold", params)
