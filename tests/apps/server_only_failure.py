"""An app whose import fails only inside the fork server (an import-time
check of the process title the server sets before it imports the app): the
master has loaded it, the server cannot, and the master must fork the
children itself. TEST_SERVER_FAILURE=kill: the import kills the server
outright (as a crash in C code would) instead of raising."""

import os
import signal

import phoenix

if open("/proc/self/cmdline").read().startswith("phoenix: fork server"):
    if os.environ.get("TEST_SERVER_FAILURE") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("this app will not load in a fork server")

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=1.0, workers=1)


@app.job
def parent(params):
    return {"ppid": os.getppid()}
