"""An app that installs signal handlers at import, as many libraries do: a
TERM handler, and SIGCHLD ignored. Its job children must start with the
default handlers all the same (a TERM from the master ends them; the fork
server reaps them and reports their exits)."""

import os
import signal

import phoenix


def _on_term(signum, frame):
    pass


signal.signal(signal.SIGTERM, _on_term)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=1.0, kill_grace=1.0, workers=1)


@app.job
def handlers(params):
    # SIGTERM: not the app's handler (the job child has Phoenix's own, the polite stop's); SIGCHLD: the default.
    return {"SIGTERM": signal.getsignal(signal.SIGTERM) is not _on_term,
            "SIGCHLD": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL}


@app.job
def exits(params):
    os._exit(params["code"])
