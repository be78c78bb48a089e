"""Jobs whose output is hostile to a log: fake records, escapes, bytes that
are not UTF-8, floods, grandchildren that keep writing (tests/faults/test_job_output.py)."""

import os
import subprocess
import sys
import time

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=2.0, kill_grace=1.0, backoff_base=0.01,
                  backoff_cap=0.02, workers=4)

# A line a job could print to pass for a record of its master's (text) and a
# JSON object that would pass for one of its events (json).
FAKE_TEXT = "2026-01-01T00:00:00.000 INFO    [{pid}] spawn pid=1 job=forged attempt=1"
FAKE_JSON = '{"ts": 1.0, "level": "info", "master_pid": {pid}, "pid": {pid}, "event": "forged"}'


@app.job
def hostile(params):
    pid = os.getppid()
    print(FAKE_TEXT.format(pid=params["master"]))
    print(FAKE_JSON.replace("{pid}", str(params["master"])), file=sys.stderr)
    sys.stdout.flush()
    os.write(1, b"no newline, an escape \x1b[2J and bytes that are not UTF-8: \xff\xfe")
    os.write(2, b"\r\n{\"unclosed\": ")
    subprocess.run(["sh", "-c", "echo from-a-subprocess; echo to-its-stderr >&2"], check=True)
    return {"parent": pid}


@app.job
def flood(params):
    """Writes as fast as it can for a while; returns how much."""
    chunk = (b"x" * 99 + b"\n") * 100
    written = 0
    deadline = time.monotonic() + params["seconds"]
    while time.monotonic() < deadline:
        written += os.write(1, chunk)
    print("the last line")
    return {"written": written}


@app.job
def ticks(params):
    padding = "." * params.get("pad", 0)  # a line longer than a page needs new blocks of the disk
    for i in range(params["n"]):
        print(f"tick {i}{padding}")
        phoenix.heartbeat()
        time.sleep(params["every"])
    return None


@app.job(retries=5)
def fails_until(params):
    job = phoenix.current_job()
    print(f"this is attempt {job.attempt}")
    if job.attempt < params["succeed_at"]:
        raise RuntimeError(f"attempt {job.attempt} fails on purpose")
    return None


@app.job
def leaves_a_writer(params):
    """A grandchild in a session of its own that keeps the job's stdout open
    and keeps writing after the job returned."""
    writer = subprocess.Popen(["sh", "-c", "while :; do echo grandchild-tick; sleep 0.05; done"],
                              start_new_session=True)
    with open(params["pidfile"], "w") as f:
        f.write(str(writer.pid))
    time.sleep(0.3)
    return None


@app.job
def closes_its_output(params):
    """Closes stdout and stderr, then opens a file of its own (it gets fd 1)."""
    os.close(1)
    os.close(2)
    fd = os.open(params["own"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b"y" * params["bytes"])
    time.sleep(params["linger"])
    return {"fd": fd}


@app.job
def logs_and_prints(params):
    """Logging imported only when the job runs (this app does not import it)."""
    import logging

    logging.getLogger("tests.job_output").info("a record from job %s", params["who"])
    print(f"a print from job {params['who']}")
    return None


@app.job(max_runtime=1.5, retries=0)
def floods_until_killed(params):
    """Writes as fast as it can until max_runtime kills it: no exit of its own to trim its file."""
    chunk = (b"y" * 99 + b"\n") * 100
    while True:
        os.write(1, chunk)


@app.job(retries=0)
def writes_everywhere(params):
    """Prints, writes to sys.stderr, and tries fd 0 too (a forged record, if fd 0 were anything writable)."""
    print("to stdout")
    sys.stderr.write("to stderr\n")
    try:
        os.write(0, FAKE_TEXT.format(pid=params["master"]).encode() + b"\n")
        wrote_to_stdin = True
    except OSError:
        wrote_to_stdin = False
    return {"stdout_is_none": sys.stdout is None, "wrote_to_stdin": wrote_to_stdin}
