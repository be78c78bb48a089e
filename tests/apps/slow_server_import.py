"""An app whose import takes seconds in the fork server only (as a heavy
framework's would): jobs that come meanwhile must not wait for it."""

import os
import time

import phoenix

if open("/proc/self/cmdline").read().startswith("phoenix: fork server"):
    time.sleep(float(os.environ.get("TEST_SERVER_IMPORT_SECONDS", "3")))

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=1.0, workers=1)


@app.job
def parent(params):
    return {"ppid": os.getppid()}
