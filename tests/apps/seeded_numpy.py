"""An app without threads that seeds numpy (and imports logging) at import:
its children come from the fork server (tests/faults/test_user_code.py,
tests/faults/test_job_output.py)."""

import logging

import numpy

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=2.0, retries=0, workers=4)
numpy.random.seed(7)


@app.job
def draws(params):
    return numpy.random.randint(0, 2**31, 4).tolist()


@app.job
def logs_and_prints(params):
    """Logging set up in the fork server already: the app imports it."""
    logging.getLogger("tests.seeded_numpy").info("a record from job %s", params["who"])
    print(f"a print from job {params['who']}")
    return None
