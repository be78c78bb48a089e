"""The applications the benchmarks run: Phoenix apps and jobs, the peers'
task function (multiprocessing; RQ's is in bench.rq_tasks) and a trivial WSGI app for gunicorn.

Kept lean on purpose: a Phoenix master imports this module (and so does its
`phoenix check` preflight), so it imports nothing beyond phoenix and the
standard library; its import time is part of what the replacement costs.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import phoenix

# Throughput: 2 slots, default liveness settings (1 s beats, 5 s timeout).
noop_app = phoenix.App("bench-noop", workers=2)

# Beating children: 5 Hz beats, 5 s timeout, as in the table.
beat_app = phoenix.App("bench-beat", heartbeat_interval=0.2, heartbeat_timeout=5.0, kill_grace=1.0)


@noop_app.job
def noop(params):
    """The no-op job of the throughput figure."""
    return None


# Throughput as a user runs a batch: a startup hook submits the jobs (one
# Client.submit_many), and every job owes an on_finished callback. The hook
# reads how many and where from the environment the benchmark sets.
batch_app = phoenix.App("bench-batch", workers=2)
BATCH_JOBS = "BENCH_BATCH_JOBS"
BATCH_STATE_DIR = "BENCH_BATCH_STATE_DIR"
BATCH_CALLBACK = "BENCH_BATCH_CALLBACK"  # "0": the same app without the callback (the second row)


@batch_app.job
def batch_noop(params):
    """The batch's no-op job."""
    return None


def batch_done(job, result):
    """The batch's callback: nothing, so that the figure is the callback path's cost."""
    return None


if os.environ.get(BATCH_CALLBACK, "1") == "1":
    batch_app.on_finished(batch_done)


@batch_app.startup
def submit_batch(app):
    n = int(os.environ.get(BATCH_JOBS, "0"))
    if n:
        phoenix.Client(state_dir=os.environ[BATCH_STATE_DIR]).submit_many(
            ("bench.apps:batch_noop", i, f"batch-{i}") for i in range(n))


@beat_app.job
def beat(params):
    """Only beats: the heartbeat thread sends at 5 Hz while this sleeps."""
    seconds = (params or {}).get("s", 3600)
    count_dir = (params or {}).get("count_dir")
    if count_dir:
        _count_sends(count_dir)
    time.sleep(seconds)
    return None


@beat_app.job(retries=0)
def hang(params):
    """Beats for a while, then stops itself (SIGSTOP freezes every thread,
    the heartbeat thread included): what a hung child looks like from outside.
    For a cross-check of the master's figure, records the wall-clock time of
    the last beat it sent: the send is wrapped, and the stop happens while
    holding the lock the wrapper takes, so no beat can slip out after it."""
    import threading

    from phoenix.child import run as child

    record = params.get("record")
    runtime = child._runtime
    lock = threading.Lock()
    last = [0.0]
    if runtime is not None:
        original = runtime.sender.send_once

        def send_once(data: bytes) -> bool:
            with lock:
                ok = original(data)
                if ok:
                    last[0] = time.time()
                return ok

        runtime.sender.send_once = send_once  # type: ignore[method-assign]
    time.sleep(params["after"])
    with lock:
        if record:
            with open(os.path.join(record, f"{os.getpid()}.stop"), "w") as f:
                f.write(repr(last[0]))
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(3600)


@beat_app.job
def probe(params):
    """Spawn latency: tell the benchmark the moment the job body starts
    (CLOCK_MONOTONIC is system-wide on Linux), then end at once."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.sendto(str(time.monotonic_ns()).encode() + b" " + str(params["i"]).encode(), params["reply"])
    finally:
        sock.close()
    return None


def _count_sends(count_dir: str) -> None:
    """Wrap this child's heartbeat sender to count, by sequence number, the
    beats delivered, the beats lost (numbered but never sent), and the send
    attempts that found the queue full or the master away and were retried
    (a beat that waited is late, not lost). Written to COUNT_DIR/PID every
    0.25 s by a small thread."""
    import json
    import threading

    from phoenix.child import run as child

    runtime = child._runtime
    if runtime is None:
        return
    sender = runtime.sender
    original = sender.send_once
    state = {"numbered": 0, "delivered": 0, "waited": 0, "retrying": False}

    def counting_send_once(data: bytes) -> bool:
        seq = json.loads(data)["seq"]
        ok = original(data)
        state["numbered"] = max(state["numbered"], seq)
        if ok:
            state["delivered"] += 1
        else:
            state["waited"] += 1
        state["retrying"] = not ok
        return ok

    sender.send_once = counting_send_once  # type: ignore[method-assign]
    path = os.path.join(count_dir, str(os.getpid()))

    def flush_forever() -> None:
        while True:
            # Numbers not delivered, less the one being retried right now.
            lost = state["numbered"] - state["delivered"] - (1 if state["retrying"] else 0)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{state['delivered']} {lost} {state['waited']}")
            os.rename(tmp, path)
            time.sleep(0.25)

    threading.Thread(target=flush_forever, daemon=True).start()


# -- peers ------------------------------------------------------------------------


def pool_noop(i):
    """multiprocessing.Pool's task: nothing."""
    return None


def wsgi_app(environ, start_response):
    """gunicorn's app: the smallest WSGI application."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]

# Ten thousand children (bench.tenk): 1 Hz beats, the default 5 s timeout, as the issue states it.
tenk_app = phoenix.App("bench-tenk", heartbeat_interval=1.0, heartbeat_timeout=5.0, kill_grace=1.0)


@tenk_app.job
def sleeper(params):
    """Sleeps; its heartbeat thread beats once a second meanwhile."""
    time.sleep((params or {}).get("s", 3600))
    return None
