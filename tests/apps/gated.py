"""A job that runs until the test lets it end (a file appears), noting its
start and end in a file outside the state directory: what the full-disk
tests need to have every job finish while the disk is full."""

import os
import time

import phoenix

# heartbeat_timeout: room for a loaded machine (an adopted child holding its outcome is judged by it
# from the new master's ready on; no test here waits for a kill)
app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=6.0, kill_grace=1.0, workers=4)


def _note(path: str, what: str) -> None:
    with open(path, "a") as f:
        f.write(f"{what} {phoenix.current_job().attempt} {os.getpid()}\n")


@app.job
def gated(params):
    _note(params["notes"], "start")
    while not os.path.exists(params["go"]):
        time.sleep(0.02)
        phoenix.heartbeat()
    _note(params["notes"], "end")
    return {"pid": os.getpid()}
