"""The apps of bench/scheduling.py: a job that does nothing (`app`), and the
same with a schedule that ticks every second (`tick_app`)."""

import phoenix

app = phoenix.App(workers=4, heartbeat_interval=0.5, heartbeat_timeout=10.0)
tick_app = phoenix.App(workers=4, heartbeat_interval=0.5, heartbeat_timeout=10.0)


@app.job
def noop(params):
    return None


@tick_app.periodic(every=1, overlap="allow")
def tick(params):
    return None
