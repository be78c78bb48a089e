"""Jobs for tests/faults/test_exhaustion.py and test_truthful_status.py: ones
that behave, and ones that cut themselves off from their master in
different ways (which the master must tell apart)."""

import os
import resource
import time

import phoenix
from phoenix.child import run as child

HEARTBEAT_TIMEOUT = 1.0
# A final no master acknowledges within a second goes to the outbox.
app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=HEARTBEAT_TIMEOUT, kill_grace=1.0, workers=4,
                  backoff_base=0.05, backoff_cap=0.2, outcome_delivery_timeout=1.0)


@app.job(retries=0)
def work(params):
    """Beats and makes progress for `s` seconds; returns its params."""
    deadline = time.monotonic() + params.get("s", 0.2)
    while time.monotonic() < deadline:
        time.sleep(0.02)
        phoenix.heartbeat()
    return params


@app.job(retries=0)
def until(params):
    """Beats until the file at `path` exists (the test's word to finish); returns its pid."""
    while not os.path.exists(params["path"]):
        time.sleep(0.02)
        phoenix.heartbeat()
    return {"pid": os.getpid()}


@app.job(retries=0)
def close_all_fds(params):
    """Closes every descriptor above stderr (a daemon-style clean-up), its
    connection to the master included, then works on for good."""
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    while True:
        time.sleep(0.05)


@app.job(retries=0)
def silent(params):
    """Stops beating but keeps its connection open: truly silent (a hang)."""
    runtime = child._runtime
    assert runtime is not None
    with runtime.sender.lock:
        runtime.sender.beats_stopped = True
    while True:
        time.sleep(0.05)


@app.job(retries=0)
def plant_in_outbox(params):
    """Leaves at its own outbox paths what a hostile or broken job could: a
    FIFO where its outcome would be, a 3 GB sparse file where its checkpoint
    would be (or the other way round), then dies without a final."""
    job = phoenix.current_job()
    outbox = params["outbox"]
    final, saved = f"{outbox}/{job.job_id}.{job.attempt}.json", f"{outbox}/{job.job_id}.{job.attempt}.checkpoint.json"
    fifo, big = (final, saved) if params["fifo_at"] == "final" else (saved, final)
    os.mkfifo(fifo)
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    os._exit(3)


@app.job(retries=0)
def plant_socket_and_directory(params):
    """A socket where its checkpoint would be, a directory where its outcome would be, then a death without a final."""
    import socket

    job = phoenix.current_job()
    outbox = params["outbox"]
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(f"{outbox}/{job.job_id}.{job.attempt}.checkpoint.json")
    os.mkdir(f"{outbox}/{job.job_id}.{job.attempt}.json")
    os._exit(3)
