"""An app without threads that seeds numpy at import: its children come from
the fork server (tests/faults/test_user_code.py)."""

import numpy

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=2.0, retries=0, workers=4)
numpy.random.seed(7)


@app.job
def draws(params):
    return numpy.random.randint(0, 2**31, 4).tolist()
