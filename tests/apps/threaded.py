"""An app that starts a thread at import (a cache refresher, a metrics
pusher): Phoenix must not fork its children from a fork server then."""

import os
import threading

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=1.0, workers=2)

_refresher = threading.Thread(target=threading.Event().wait, name="cache-refresher", daemon=True)
_refresher.start()


@app.job
def parent(params):
    return {"ppid": os.getppid()}
