"""Jobs in a pool of 3 (tests/test_scheduling.py): each run appends when it
started and ended to $PHOENIX_TEST_RUNS."""

import json
import os
import time

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=5.0, kill_grace=1.0, workers=4, pools={"db": 3})


def _record(kind, started):
    job = phoenix.current_job()
    with open(os.environ["PHOENIX_TEST_RUNS"], "a") as f:
        f.write(json.dumps({"kind": kind, "key": job.key, "start": started, "end": time.time()}) + "\n")


@app.job(pool="db")
def write(params):
    started = time.time()
    time.sleep(params["s"])
    _record("write", started)


@app.job
def read(params):
    _record("read", time.time())
