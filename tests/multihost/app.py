"""The multi-host suite's jobs. `tick` runs for params["s"] seconds (a later
attempt for params["rerun_s"], if given) and, every
50 ms, appends the CLOCK_MONOTONIC time to its own file
$PHOENIX_MH_TICKS/<key>.<attempt>.<pid> (one clock for every namespace of the
machine): the first and last tick bound when the attempt really ran, whatever
the store recorded. Callbacks append one JSON line to $PHOENIX_TEST_CALLBACKS,
shared by all hosts (O_APPEND, one write per line)."""

import json
import os
import time

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=3.0, kill_grace=1.0, backoff_base=0.05,
                  backoff_cap=0.2, workers=2, callback_timeout=5.0, pools={"db": 3})


def _record(kind, job):
    path = os.environ.get("PHOENIX_TEST_CALLBACKS")
    if path:
        line = json.dumps({"kind": kind, "key": job.key, "attempt": job.attempt, "outcome": job.outcome,
                           "host": os.environ.get("PHOENIX_MH_HOST", ""), "at": time.time()})
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


@app.on_finished
def finished(job, result):
    _record("finished", job)


@app.on_failed
def failed(job, error):
    _record("failed", job)


@app.job(retries=5)
def tick(params):
    job = phoenix.current_job()
    path = os.path.join(os.environ["PHOENIX_MH_TICKS"], f"{job.key}.{job.attempt}.{os.getpid()}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    seconds = params["rerun_s"] if job.attempt > 1 and "rerun_s" in params else params.get("s", 0)
    deadline = time.monotonic() + seconds
    try:
        while True:
            os.write(fd, f"{time.monotonic():.3f}\n".encode())
            if time.monotonic() >= deadline:
                return {"key": job.key}
            phoenix.heartbeat()
            time.sleep(0.05)
    finally:
        os.close(fd)


@app.job(retries=5, pool="db")
def pooled_tick(params):
    """`tick` in the pool `db` (3 slots across every host)."""
    return tick(params)
