"""Long jobs for the tests: a crawl over numbered items that saves its place
with phoenix.checkpoint(), says how far it is with phoenix.progress(), and
stops politely on phoenix.Interrupted. Each attempt appends one line to
params["log"]: "ATTEMPT PID START" (START: the item it resumed from)."""

import os
import time
from pathlib import Path

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=2.0, kill_grace=3.0, backoff_base=0.05,
                  backoff_cap=0.2, workers=4, outcome_delivery_timeout=2.0)


def _begin(params: dict) -> int:
    job = phoenix.current_job()
    start = job.checkpoint["next"] if job.checkpoint else 0
    with open(params["log"], "a") as log:
        log.write(f"{job.attempt} {os.getpid()} {start}\n")
    return start


@app.job
def crawl(params):
    """Checkpoints after every item; waits at params["hold_at"] until the file params["gate"] exists;
    with params["until"], ends (at the item it reached) once that file exists."""
    start = _begin(params)
    slowest = 0.0
    for item in range(start, params["n"]):
        if "until" in params and Path(params["until"]).exists():
            return {"started_at": start, "slowest": slowest, "ended_at": item}
        while item == params.get("hold_at") and not Path(params["gate"]).exists():
            time.sleep(0.02)
        time.sleep(params.get("step", 0.01))
        began = time.monotonic()
        phoenix.checkpoint({"next": item + 1})
        slowest = max(slowest, time.monotonic() - began)
        phoenix.progress(item + 1, params["n"], f"item {item}")
    return {"started_at": start} if "hold_at" in params else {"started_at": start, "slowest": slowest}


@app.job
def polite(params):
    """Saves its place only when asked to stop, then lets Interrupted end it. Asked to, it takes
    params["saving"] seconds to save (within kill_grace), or until the file params["saved_when"] exists,
    after touching the file params["saving_mark"]."""
    start = _begin(params)
    item = start
    try:
        for item in range(start, params["n"]):
            time.sleep(params.get("step", 0.05))
            phoenix.progress(item + 1, params["n"])
    except phoenix.Interrupted:
        assert phoenix.stopping()
        if "saving_mark" in params:
            Path(params["saving_mark"]).touch()
        time.sleep(params.get("saving", 0))
        while "saved_when" in params and not Path(params["saved_when"]).exists():
            time.sleep(0.02)
            phoenix.heartbeat()
        phoenix.checkpoint({"next": item})
        raise
    return {"started_at": start}


@app.job
def reporting(params):
    """Reports progress in a tight loop until the file params["gate"] exists."""
    done = 0
    while not Path(params["gate"]).exists():
        done += 1
        phoenix.progress(done, None, "spinning")
    phoenix.progress(done, done, "done")
    return {"calls": done}


@app.job
def bad_checkpoint(params):
    phoenix.checkpoint(params["what"] == "set" and {1, 2} or "x" * (70 * 1024))


@app.job(retries=0)
def forks_and_checkpoints(params):
    """Checkpoints, forks a copy that tries to checkpoint too (and report progress), then checkpoints again."""
    phoenix.checkpoint({"parent": 0})
    pid = os.fork()
    if pid == 0:
        try:
            phoenix.progress(1, 2, "from the copy")  # ignored: only the job's own process reports
            phoenix.checkpoint({"copy": 1})
            os._exit(3)
        except phoenix.UsageError as exc:
            with open(params["said"], "w") as f:
                f.write(str(exc))
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    phoenix.checkpoint({"parent": 2})
    return {"copy_exit": os.waitstatus_to_exitcode(status)}


@app.job(retries=0, stall_timeout=1.0)
def saves_until(params):
    """Beats and saves a checkpoint every 0.1 s until the file params["done"] exists."""
    Path(params["started"]).touch()
    saves = 0
    while not Path(params["done"]).exists():
        phoenix.heartbeat()
        phoenix.checkpoint({"saves": saves})
        saves += 1
        time.sleep(0.1)
    return {"saves": saves}


@app.job(max_memory="150M", retries=0)
def grows(params):
    """Grows by 20 MB every 40 ms (about 500 MB/s) until it is killed (its limit: 150M)."""
    held = []
    while True:
        held.append(b"x" * (20 * 1024 * 1024))  # written: resident at once
        time.sleep(0.04)


@app.job
def neighbour(params):
    time.sleep(params["s"])
    return "done"


@app.job(max_memory="150M", retries=0)
def grandchild_grows(params):
    """Forks a grandchild that grows by 20 MB every 40 ms up to 300 MB and then
    exits 0 (the job itself stays small); returns how the grandchild ended."""
    pid = os.fork()
    if pid == 0:
        held = []
        for _ in range(15):
            held.append(b"x" * (20 * 1024 * 1024))
            time.sleep(0.04)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return {"grandchild": os.waitstatus_to_exitcode(status)}


@app.job(max_memory="150M", retries=0)
def limited_until(params):
    """Holds 20 MB until the file params["gate"] exists."""
    held = b"x" * (20 * 1024 * 1024)
    while not os.path.exists(params["gate"]):
        time.sleep(0.05)
    return len(held)


@app.job(retries=1)
def grows_unlimited(params):
    """No limit of its own: grows by 20 MB every 40 ms until something kills it."""
    held = []
    while True:
        held.append(b"x" * (20 * 1024 * 1024))
        time.sleep(0.04)


@app.job(retries=0)
def full_final(params):
    """A result of exactly 64 KiB of JSON and a 200-character note not yet sent: each at its limit."""
    phoenix.progress(0, 2, "start")
    phoenix.progress(1, 2, params.get("char", "\u00e9") * 200)
    return "a" * 65534


@app.job(retries=0)
def exits_on_term(params):
    """Its own TERM handler leaves with sys.exit(params["code"]) (Phoenix's polite stop replaced);
    its second attempt returns at once."""
    import signal
    import sys

    job = phoenix.current_job()
    if job.attempt > 1:
        return {"attempt": job.attempt}
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(params["code"]))
    Path(params["ready"]).touch()
    while True:
        time.sleep(0.05)


@app.job(retries=0)
def raises_interrupted(params):
    """Raises phoenix.Interrupted itself: nobody asked it to stop."""
    raise phoenix.Interrupted("gave up on its own")
