"""An app whose import fails only inside the fork server (an import-time
check that sees how the process was started): the master has loaded
it, the server cannot, and the master must fork the children itself."""

import os
import sys

import phoenix

if sys.argv[:1] == ["-c"]:  # the fork server: `python -c ...`; a master is `phoenix start`
    raise RuntimeError("this app will not load in a fork server")

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=1.0, workers=1)


@app.job
def parent(params):
    return {"ppid": os.getppid()}
