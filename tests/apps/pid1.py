"""Jobs for running the master as PID 1 of a PID namespace (a container's
init): jobs that leave orphans and zombies behind, and one that runs until
told to stop. Pids written to files are the namespace's own."""

import json
import os
import signal
import time

import phoenix

if os.environ.get("PHOENIX_TEST_IMPORT_MARK"):  # a slow import, when a test asks: it says when it began
    with open(os.environ["PHOENIX_TEST_IMPORT_MARK"], "w"):
        pass
    time.sleep(2.0)

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=2.0, kill_grace=1.0, backoff_base=0.05,
                  backoff_cap=0.2, workers=4)


def _leave_orphan_and_zombie(sleep: float) -> dict[str, int]:
    """A daemon (setsid and a double fork) that sleeps `sleep` seconds, and a
    child that exits at once and is never waited for (a zombie)."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        daemon = os.fork()
        if daemon == 0:
            time.sleep(sleep)
            os._exit(0)
        os.write(write_end, str(daemon).encode())
        os._exit(0)
    os.waitpid(middle, 0)
    daemon = int(os.read(read_end, 64))
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)
    return {"daemon": daemon, "zombie": zombie, "job": os.getpid()}


@app.job(retries=0)
def leave_orphans(params):
    """Leaves a daemon and a zombie, writes their pids, then ends as
    `params["end"]` says: "finish" (returns), or "sigkill" (killed from
    outside, as the OOM killer would: no clean-up of its own runs)."""
    pids = _leave_orphan_and_zombie(params["sleep"])
    tmp = params["pidfile"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(pids, f)
    os.rename(tmp, params["pidfile"])
    if params["end"] == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    return pids


@app.job(retries=0)
def run_until_file(params):
    """Beats until `params["file"]` exists, then returns its pid."""
    while not os.path.exists(params["file"]):
        time.sleep(0.05)
        phoenix.heartbeat()
    return {"pid": os.getpid()}


@app.job(retries=0)
def ignores_term(params):
    """Beats forever and ignores TERM: only the KILL after kill_grace ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.05)
        phoenix.heartbeat()
