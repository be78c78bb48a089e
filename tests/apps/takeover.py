"""Jobs that turn on their master (signals, daemons) and long jobs for the
wall-clock tests: tests/faults/test_job_takeover.py and test_wall_clock.py."""

import os
import signal
import time

import phoenix
from phoenix.linux import procfs

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=1.0, kill_grace=1.0, backoff_base=0.05,
                  backoff_cap=0.2, workers=4, callback_timeout=2.0)


def _write_pid(path):
    """`pid start-time`: the pair names this process even after it is gone."""
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {procfs.start_time(os.getpid())}")
    os.rename(path + ".tmp", path)


def _master():
    """The master: the parent, or the parent's parent when a fork server forked this child."""
    parent = os.getppid()
    with open(f"/proc/{parent}/cmdline", "rb") as f:
        if f.read().startswith(b"phoenix: fork server"):
            return procfs.parent_pid(parent)
    return parent


def _wait_for_file(path):
    while not os.path.exists(path):
        time.sleep(0.01)
        phoenix.heartbeat()


def _daemonise(then):
    """setsid and a double fork, as a daemon does: the grandchild runs `then`
    and never returns; the caller gets back once the middle process exited."""
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            try:
                then()
            finally:
                os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)


@app.job(retries=0)
def signal_master(params):
    """The job itself signals its master, then finishes."""
    os.kill(_master(), getattr(signal, params["signal"]))
    return {"pid": os.getpid()}


@app.job(retries=0)
def signal_parent(params):
    """The job signals its parent (the fork server), as a job written for a
    pre-fork-server Phoenix might, to reach its master."""
    os.kill(os.getppid(), getattr(signal, params["signal"]))
    return {"pid": os.getpid(), "parent": os.getppid()}


@app.job(retries=0)
def daemon_signals_master(params):
    """A daemon of the job (outside its process group and session) signals
    the master, then sleeps; the job finishes once it has sent."""
    master = _master()

    def send_and_sleep():
        os.kill(master, getattr(signal, params["signal"]))
        _write_pid(params["pidfile"])
        while True:
            time.sleep(1)

    _daemonise(send_and_sleep)
    _wait_for_file(params["pidfile"])
    if params.get("release"):  # the test says when the master has seen the signal: the daemon is alive then
        _wait_for_file(params["release"])
    return {"pid": os.getpid()}


def _leave_a_daemon(params):
    """Leaves a daemon behind (setsid, double fork, sleeping forever), then
    finishes, or hangs until max_runtime with `hang`."""

    def sleep_forever():
        if params.get("ignore_term"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _write_pid(params["pidfile"])
        while True:
            time.sleep(1)

    _daemonise(sleep_forever)
    _wait_for_file(params["pidfile"])
    if params.get("hang"):
        while True:
            time.sleep(0.05)  # beats go on: only max_runtime ends it
    return {"pid": os.getpid()}


@app.job(retries=0)
def daemonise(params):
    return _leave_a_daemon(params)


@app.job(retries=0, max_runtime=1.0)
def daemonise_then_hang(params):
    return _leave_a_daemon({**params, "hang": True})


@app.job(retries=0, max_runtime=30.0)
def until_released(params):
    """Runs until the file `release` exists (well within max_runtime)."""
    _wait_for_file(params["release"])
    return {"pid": os.getpid()}


@app.job(retries=0)
def noop(params):
    return params


@app.job(retries=0)
def signal_state(params):
    """This job's blocked and ignored signal masks, from /proc."""
    with open("/proc/self/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f) if k in ("SigBlk", "SigIgn")}
