"""Jobs that behave well and badly, for the tests. Callbacks append one JSON
line per call to $PHOENIX_TEST_CALLBACKS so tests can count them."""

import ctypes
import json
import os
import signal
import time

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=1.0, kill_grace=1.0, backoff_base=0.05,
                  backoff_cap=0.2, workers=8, callback_timeout=2.0)


def _record(kind, job, payload):
    path = os.environ.get("PHOENIX_TEST_CALLBACKS")
    if path:
        line = json.dumps({"kind": kind, "id": job.id, "key": job.key, "attempt": job.attempt,
                           "outcome": job.outcome, "payload": payload, "master": os.getpid(),
                           "reason": job.reason, "max_rss_kb": job.max_rss_kb})
        with open(path, "a") as f:
            f.write(line + "\n")


@app.on_finished
def finished(job, result):
    _record("finished", job, result)
    if isinstance(job.params, dict) and job.params.get("callback_sleep"):
        time.sleep(job.params["callback_sleep"])
    if isinstance(job.params, dict) and job.params.get("callback_raises"):
        raise RuntimeError("callback exploded on purpose")
    if isinstance(job.params, dict) and job.params.get("callback_forks"):
        # App code that forks from a callback thread (multiprocessing does):
        # the process holds copies of the master's fds while it lives.
        pid = os.fork()
        if pid == 0:
            time.sleep(job.params["callback_forks"])
            os._exit(0)
        with open(job.params["pidfile"], "w") as f:
            f.write(str(pid))


@app.on_failed
def failed(job, error):
    _record("failed", job, error)


@app.job
def noop(params):
    return params


@app.job
def sleep(params):
    """Sleeps params["s"] seconds, or less once the file params["until"] (if given) exists."""
    deadline = time.monotonic() + params["s"]
    release = params.get("until")
    while time.monotonic() < deadline and not (release and os.path.exists(release)):
        time.sleep(0.05)
        phoenix.heartbeat()
    return {"slept": params["s"], "pid": os.getpid(), "attempt_id": phoenix.current_job().attempt_id}


@app.job(retries=2)
def long_first(params):
    """Sleeps params["s"] seconds on its first attempt only (a re-run returns at once)."""
    deadline = time.monotonic() + (params["s"] if phoenix.current_job().attempt == 1 else 0)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        phoenix.heartbeat()
    return {"attempt": phoenix.current_job().attempt}


@app.job(retries=2)
def hang_first(params):
    """Stops itself (no more beats) on its first attempt only."""
    if phoenix.current_job().attempt == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(params.get("s", 0.1))
    return {"attempt": phoenix.current_job().attempt}


@app.job(retries=0)
def stop_self(params):
    os.kill(os.getpid(), signal.SIGSTOP)


@app.job(retries=0)
def segfault(params):
    ctypes.string_at(0)


@app.job(retries=0)
def exit3(params):
    os._exit(3)


@app.job(retries=0)
def raises(params):
    raise ValueError("boom from the job")


@app.job(retries=0)
def wait_forever(params):
    while True:
        time.sleep(0.05)
        phoenix.heartbeat()


@app.job(retries=0, stall_timeout=1.0)
def stall(params):
    time.sleep(3600)  # beats continue from the heartbeat thread; progress does not


@app.job(retries=0, stall_timeout=1.0)
def stall_then_slowly_raise_on_term(params):
    """Stalls; its own TERM handler takes params["s"] seconds, then raises
    (a cleanup that fails, slowly: time for its master to be replaced meanwhile).
    Writes params["term"] when the TERM came."""
    def on_term(_signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM (a next master's) does not start it again
        with open(params["term"], "w") as f:
            f.write("TERM")
        time.sleep(params["s"])
        raise RuntimeError("cleanup failed on TERM")

    signal.signal(signal.SIGTERM, on_term)
    time.sleep(3600)


@app.job(retries=0, stall_timeout=1.0)
def stall_then_raise_on_term(params):
    """Stalls, and its own TERM handler fails (a cleanup that raises)."""
    def on_term(_signum, _frame):
        raise RuntimeError("cleanup failed on TERM")

    signal.signal(signal.SIGTERM, on_term)
    time.sleep(3600)


@app.job(retries=0, max_runtime=1.0)
def cpu_loop(params):
    while True:
        phoenix.heartbeat()


@app.job(retries=0)
def big_result(params):
    return "x" * 100_000


@app.job(retries=0)
def not_json(params):
    return object()


@app.job(retries=0)
def grandchild(params):
    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    with open(params["pidfile"], "w") as f:
        f.write(str(pid))
    return {"grandchild": pid}


@app.job(retries=3)
def flaky(params):
    if phoenix.current_job().attempt <= params["fail_times"]:
        raise RuntimeError(f"failing attempt {phoenix.current_job().attempt}")
    return {"attempt": phoenix.current_job().attempt}


@app.job(retries=3)
def fails_when_told(params):
    """Beats until the file params["path"] exists, then raises (it has retries left)."""
    while not os.path.exists(params["path"]):
        time.sleep(0.02)
        phoenix.heartbeat()
    raise RuntimeError("told to fail")


@app.job(retries=1)
def always_fails(params):
    raise RuntimeError("always")


@app.job(retries=0)
def ignores_term(params):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.05)
        phoenix.heartbeat()


@app.job(retries=5)
def exclusive_sleep(params):
    """Sleeps (as `sleep`); records a violation if another attempt of the same job is running at the same time."""
    import fcntl

    lock = open(os.path.join(params["lockdir"], phoenix.current_job().key), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with open(os.path.join(params["lockdir"], "VIOLATIONS"), "a") as f:
            f.write(f"{phoenix.current_job().key} attempt {phoenix.current_job().attempt}\n")
    deadline = time.monotonic() + params["s"]
    release = params.get("until")  # as in `sleep`: ends early once this file exists
    while time.monotonic() < deadline and not (release and os.path.exists(release)):
        time.sleep(0.02)
        phoenix.heartbeat()
    return {"attempt": phoenix.current_job().attempt}


@app.job(retries=3)
def records_term(params):
    """Forks a grandchild into its process group; each appends "TERM <pid>" to
    params["file"] when it gets SIGTERM. Writes params["ready"] once both listen.
    The job waits (up to 10 s) for the grandchild's line before it exits, as
    docs/long-jobs.md asks of a job whose subprocesses clean up on TERM: the
    master SIGKILLs what a job leaves as soon as the job ends (by design), which
    under load came before the grandchild's handler had run."""
    job_pid = os.getpid()

    def on_term(_signum, _frame):
        with open(params["file"], "a") as f:
            f.write(f"TERM {os.getpid()}\n")
        if os.getpid() == job_pid:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with open(params["file"]) as f:
                    if len(set(f.read().split("\n")) - {""}) >= 2:
                        break
                time.sleep(0.01)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if os.fork() == 0:
        while True:
            time.sleep(0.05)
    with open(params["ready"], "w") as f:
        f.write("ready")
    while True:
        time.sleep(0.05)
        phoenix.heartbeat()


@app.job(retries=0)
def subprocess_beats(params):
    """Starts a program that tries to beat (and finish) for this job: it finds
    no connection inherited from the job (close-on-exec), and one it makes
    itself is its own pid's, which is no attempt's."""
    import subprocess
    import sys

    me = phoenix.current_job()
    code = (
        "import json, os, socket, stat, sys\n"
        "inherited = sum(1 for fd in os.listdir('/proc/self/fd') if int(fd) > 2 and "
        "os.path.exists(f'/proc/self/fd/{fd}') and stat.S_ISSOCK(os.stat(f'/proc/self/fd/{fd}').st_mode))\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        "s.connect(sys.argv[1])\n"
        "try:\n"
        "    s.send(json.dumps({'v': 1, 'job': int(sys.argv[2]), 'att': int(sys.argv[3]), 'k': 'finished',\n"
        "                       'seq': 10**6, 'p': 0, 'result': 'forged'}).encode())\n"
        "except OSError:\n"
        "    pass\n"
        "print(inherited)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, params["socket"], str(me.job_id), str(me.attempt)],
                         capture_output=True, text=True, check=True)
    return {"inherited_sockets": int(out.stdout.strip())}


@app.job(retries=2)
def lifetime(params):
    """Appends "start <attempt> <wall time>" to params["file"], and "end <attempt>
    <wall time>" when it ends (SIGTERM included); its first attempt lasts
    params["s"] seconds, later ones return at once."""
    attempt = phoenix.current_job().attempt

    def note(what):
        with open(params["file"], "a") as f:
            f.write(f"{what} {attempt} {time.time()}\n")

    def on_term(_signum, _frame):
        note("end")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    note("start")
    if attempt == 1:
        time.sleep(params["s"])
    note("end")
    return {"attempt": attempt}


@app.job
def loaded_modules(params):
    """Which of the named modules this child has: what the fork server had imported."""
    import sys

    return sorted(name for name in params["names"] if name in sys.modules)


@app.job
def logs_a_line(params):
    """Logging imported only when the job runs (this app does not import it)."""
    import logging

    logging.getLogger("tests.jobs").info("a record from job %s", params["who"])
    return None


@app.job
def interpreter_flags(params):
    """The interpreter flags this child runs with: its fork server's."""
    import sys

    return {"optimize": sys.flags.optimize, "dev_mode": sys.flags.dev_mode}
