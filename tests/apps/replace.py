"""The app of the replacement tests: jobs a test ends when it chooses (by
creating a file), and gates that hold a process at a known point so a test can
act *during* a preflight or *during* an exec instead of hoping to hit it.

Gates: when $PHOENIX_TEST_GATES names a directory, importing this module in
  - `phoenix check` (the preflight)              -> role "check"
  - a replacement image of `phoenix start`
    (it has PHOENIX_FDS: in-place exec or fork)  -> role "start"
does this:
  - `<dir>/<role>.die` exists: exit 3 at once (new code that crashes on start);
  - `<dir>/<role>.hold` exists: write `<dir>/<role>.waiting` (our pid), then
    wait until the hold file is removed (at most 30 s), and exit 3 if the die
    file exists by then.
While an in-place image is held here, the handled signals are still blocked
(they stay pending), the old image's children keep running, and nothing reads
the heartbeat socket: exactly the window a replacement must survive.

Every job start appends a line to $PHOENIX_TEST_RUNS (if set), so a test can
prove that no job body ran twice. Callbacks append to $PHOENIX_TEST_CALLBACKS
like those of tests.apps.jobs, with the pid of the master that ran them.

This file is also copied into a test's tmp_path as a module of its own (the
preflight-failure test breaks and repairs that copy): keep it free of imports
from the tests package.
"""

import json
import os
import sys
import time

import phoenix


def _gate() -> None:
    gates = os.environ.get("PHOENIX_TEST_GATES")
    if not gates:
        return
    argv = sys.argv[1:]
    if "check" in argv:
        role = "check"
    elif "start" in argv and os.environ.get("PHOENIX_FDS"):
        role = "start"
    else:
        return
    if os.path.exists(os.path.join(gates, f"{role}.die")):
        os._exit(3)
    hold = os.path.join(gates, f"{role}.hold")
    if os.path.exists(hold):
        waiting = os.path.join(gates, f"{role}.waiting")
        with open(waiting + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(waiting + ".tmp", waiting)
        deadline = time.monotonic() + 30
        while os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.01)
        if os.path.exists(os.path.join(gates, f"{role}.die")):
            os._exit(3)  # held, then failed: a preflight or a new master that dies at a chosen moment


_gate()

app = phoenix.App(heartbeat_interval=0.1, heartbeat_timeout=2.0, kill_grace=1.0, backoff_base=0.05,
                  backoff_cap=0.2, workers=16, callback_timeout=60.0, outcome_delivery_timeout=1.0, retries=2)


def _append(variable, record):
    path = os.environ.get(variable)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _record_callback(kind, job, payload):
    _append("PHOENIX_TEST_CALLBACKS", {"kind": kind, "id": job.id, "key": job.key, "attempt": job.attempt,
                                       "outcome": job.outcome, "payload": payload, "master": os.getpid()})


@app.on_finished
def finished(job, result):
    _record_callback("finished", job, result)
    if isinstance(job.params, dict) and job.params.get("callback_until"):
        deadline = time.monotonic() + 50  # under callback_timeout: a test must see it end, not time out
        while not os.path.exists(job.params["callback_until"]) and time.monotonic() < deadline:
            time.sleep(0.01)


@app.on_failed
def failed(job, error):
    _record_callback("failed", job, error)


@app.job
def until(params):
    """Beat until the file params["path"] exists (or params["s"] seconds pass, 10 minutes by default), then finish."""
    context = phoenix.current_job()
    _append("PHOENIX_TEST_RUNS", {"key": context.key, "attempt": context.attempt, "pid": os.getpid()})
    deadline = time.monotonic() + params.get("s", 600)
    while not os.path.exists(params.get("path", "/nonexistent")) and time.monotonic() < deadline:
        time.sleep(0.02)
        phoenix.heartbeat()
    return {"pid": os.getpid(), "attempt": context.attempt}


@app.job
def quick(params):
    context = phoenix.current_job()
    _append("PHOENIX_TEST_RUNS", {"key": context.key, "attempt": context.attempt, "pid": os.getpid()})
    return {"pid": os.getpid()}
