"""The batch tests' app: jobs held until a file exists (then finished, or
failed when params["fail"]), no retries; `on_batch_complete` appends what it
got to $PHOENIX_TEST_CALLBACKS with the pid of the master that ran it, and,
while the file $PHOENIX_TEST_BATCH_HOLD is named and missing, waits (a test
kills the master in the middle of the callback)."""

import json
import os
import time

import phoenix

app = phoenix.App(heartbeat_interval=0.1, heartbeat_timeout=5.0, kill_grace=1.0, retries=0, workers=12,
                  callback_timeout=60.0, outcome_delivery_timeout=1.0)


@app.job
def gated(params):
    deadline = time.monotonic() + 60
    while not os.path.exists(params["gate"]) and time.monotonic() < deadline:
        time.sleep(0.02)
        phoenix.heartbeat()
    if params.get("fail"):
        raise RuntimeError(f"{params['n']} fails on purpose")
    return params["n"]


@app.on_batch_complete
def complete(batch):
    jobs = batch.jobs()
    record = {"batch": batch.name, "counts": batch.counts, "completion": batch.completion, "jobs": len(jobs),
              "failed": sorted(job["key"] for job in jobs if job["state"] == "failed"), "master": os.getpid()}
    with open(os.environ["PHOENIX_TEST_CALLBACKS"], "a") as f:
        f.write(json.dumps(record) + "\n")
    hold = os.environ.get("PHOENIX_TEST_BATCH_HOLD")
    deadline = time.monotonic() + 50  # under callback_timeout
    while hold and not os.path.exists(hold) and time.monotonic() < deadline:
        time.sleep(0.02)
