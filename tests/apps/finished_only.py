"""An app with an on_finished callback and no on_failed one: a failed job owes no callback."""

import json
import os

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=1.0, kill_grace=1.0)


@app.job
def ok(params):
    return params


@app.job(retries=0)
def boom(params):
    raise ValueError("boom")


@app.on_finished
def finished(job, result):
    with open(os.environ["PHOENIX_TEST_CALLBACKS"], "a") as f:
        f.write(json.dumps({"key": job.key, "kind": "finished", "attempt": job.attempt}) + "\n")
