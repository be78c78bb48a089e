"""Jobs for tests/faults/test_small_truths.py: results of an exact JSON size,
and a job that waits to be cancelled. Callbacks are recorded as in
tests.apps.jobs (one JSON line per call to $PHOENIX_TEST_CALLBACKS)."""

import signal
import time

import phoenix
from tests.apps.jobs import _record

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=2.0, kill_grace=1.0, backoff_base=0.05,
                  backoff_cap=0.2, workers=4, callback_timeout=2.0)


@app.on_finished
def finished(job, result):
    _record("finished", job, None if isinstance(result, str) else result)


@app.on_failed
def failed(job, error):
    _record("failed", job, error)


@app.job(retries=0)
def sized_result(params):
    """A string whose compact JSON is exactly params["bytes"] bytes (its two quotes included)."""
    return "x" * (params["bytes"] - 2)


@app.job(retries=0)
def sleep(params):
    time.sleep(params.get("seconds", 60))


@app.job(retries=5)
def fails_then_waits(params):
    raise RuntimeError("fails, to wait in its backoff")


@app.job(retries=0)
def ignores_term(params):
    """Ignores TERM (as a job busy in a C call would seem to), then finishes
    after params["seconds"]: only a KILL ends it early."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(params["seconds"])
    return "finished despite the cancel"


@app.job(retries=0)
def raises_wide(params):
    """An error message of params["chars"] non-ASCII characters (6 bytes each as JSON)."""
    raise RuntimeError(params.get("char", "€") * params["chars"])
