"""A periodic job that ticks every second (tests/test_scheduling.py): each run
appends one JSON line to $PHOENIX_TEST_RUNS."""

import phoenix
from tests.apps.scheduled import record

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=5.0, kill_grace=1.0, workers=2)


@app.periodic(every=1, overlap="allow", params={"from": "schedule"})
def beat(params):
    record("beat", params)
