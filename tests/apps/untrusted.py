"""Jobs for tests/faults/test_untrusted_strings.py and test_control_clients.py:
one that runs until stopped, one that fails with a text of the caller's
choosing, and an app whose master loop breaks (a bug, played by a startup hook)."""

import time

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=10.0, kill_grace=1.0, workers=16)


@app.job(retries=0)
def wait_forever(params):
    while True:
        time.sleep(0.05)
        phoenix.heartbeat()


@app.job(retries=0)
def raises(params):
    raise ValueError(params["message"])


crashing = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=10.0, workers=1)


@crashing.startup
def break_the_loop(app):
    """A bug in one step of the master loop, as an uncaught exception would be."""
    from phoenix.master.hangs import HangKiller

    def run_due_timers(self, now):
        raise RuntimeError("a bug in the master loop")

    HangKiller.run_due_timers = run_due_timers
