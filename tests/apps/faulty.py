"""Jobs that misbehave on purpose, for the fault-injection suite
(tests/faults/). Each fails in one way and never retries, so that the first
attempt's outcome is the one to check."""

import ctypes
import json
import os
import random
import re
import signal
import socket
import time

import phoenix
from phoenix.wire.heartbeat import MAX_MESSAGE_BYTES

HEARTBEAT_TIMEOUT = 1.0
app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=HEARTBEAT_TIMEOUT, kill_grace=1.0, backoff_base=0.05,
                  backoff_cap=0.2, workers=16, callback_timeout=2.0)


# -- well behaved ------------------------------------------------------------------


@app.job(retries=0)
def work(params):
    """A real job: beats and makes progress for `s` seconds, returns its params."""
    deadline = time.monotonic() + params.get("s", 0.2)
    while time.monotonic() < deadline:
        time.sleep(0.02)
        phoenix.heartbeat()
    return params


@app.job(retries=0)
def wait_forever(params):
    while True:
        time.sleep(0.05)
        phoenix.heartbeat()


@app.job(retries=0)
def beat_for(params):
    """Does nothing for `s` seconds but let its heartbeat thread beat (load test)."""
    time.sleep(params["s"])
    return {"pid": os.getpid()}


@app.job(retries=0)
def skip_seq(params):
    """Burns `skip` sequence numbers, as beats dropped on the way would: the
    master must count exactly that many missing."""
    from phoenix.child import run as child

    time.sleep(0.5)  # some beats first
    with child._runtime.lock:
        child._runtime.seq += params["skip"]
    time.sleep(0.5)  # and some after, to reveal the gap
    return {}


# -- misbehaving -------------------------------------------------------------------


@app.job(retries=0)
def stop_self(params):
    os.kill(os.getpid(), signal.SIGSTOP)  # frozen: no more beats


@app.job(retries=0)
def segfault(params):
    ctypes.string_at(0)


@app.job(retries=0)
def exit3(params):
    os._exit(3)


@app.job(retries=0)
def raises(params):
    raise ValueError("boom from the faulty job")


@app.job(retries=0, max_runtime=1.0)
def cpu_loop(params):
    """Burns CPU forever in pure Python: the heartbeat thread still gets the
    GIL every switch interval, so only max_runtime can end it."""
    n = 0
    while True:
        n += 1


@app.job(retries=0, stall_timeout=1.0)
def blocked_read(params):
    """Blocked forever reading a socket nobody writes to. recv() releases the
    GIL, so beats go on; progress stops, and stall_timeout ends it."""
    a, b = socket.socketpair()
    phoenix.heartbeat()
    a.recv(1)


@app.job(retries=0)
def grandchildren(params):
    """Forks three grandchildren (one ignores SIGTERM), records their pids, then
    freezes. The whole process group must die with the job."""
    pids = []
    for i in range(3):
        pid = os.fork()
        if pid == 0:
            if i == 0:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(1)
        pids.append(pid)
    temporary = params["pidfile"] + ".tmp"
    with open(temporary, "w") as f:
        json.dump(pids, f)
    os.rename(temporary, params["pidfile"])
    os.kill(os.getpid(), signal.SIGSTOP)


@app.job(retries=0)
def gil_c_call(params):
    """A C call that keeps the GIL: ctypes.PyDLL does not release it (CDLL
    would), so libc sleep() starves the heartbeat thread completely."""
    time.sleep(0.3)  # beats flow first: the thread was alive, then starved
    ctypes.PyDLL(None).sleep(3600)


@app.job(retries=0)
def gil_regex(params):
    """Catastrophic backtracking: the re engine never lets go of the GIL."""
    time.sleep(0.3)
    re.match(r"(a+)+$", "a" * 64 + "b")


# -- hostile from inside ------------------------------------------------------------


def _deep(depth):
    return "[" * depth + "]" * depth


def _too_deep_to_parse(depth):
    """`depth`, or more: the first nesting depth from there that json refuses."""
    while True:
        try:
            json.loads(_deep(depth))
        except RecursionError:
            return depth
        depth *= 2


@app.job(retries=0)
def hostile(params):
    """Sends garbage to the heartbeat socket from a real child's pid: the kernel
    vouches for the connection, so the master has to reject these by content.
    A rejected message closes its connection, so each goes on a new one.
    Returns how many of each kind it sent."""
    me = phoenix.current_job()
    victim, victim_attempt = params["victim"], params["victim_attempt"]
    rng = random.Random(params.get("seed", 6))
    def send(data):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.settimeout(10.0)
        try:
            sock.connect(params["socket"])
            sock.send(data)
            # The master closes a connection once it has rejected its message:
            # waiting for that keeps each one inside this attempt's life (one
            # still in the listen backlog when the attempt ends would be
            # refused as unknown_pid, unread).
            try:
                while sock.recv(64):
                    pass
            except ConnectionResetError:
                pass  # closed with our record unread only if it was over the size limit: closed all the same
        finally:
            sock.close()

    sent = {"malformed": 0, "oversized": 0, "wrong_attempt": 0}

    def message(**fields):
        base = {"v": 1, "job": me.job_id, "att": me.attempt, "k": "beat", "seq": 1, "p": 0}
        base.update(fields)
        return json.dumps(base, separators=(",", ":")).encode()

    malformed = [
        lambda: rng.randbytes(rng.randrange(1, 512)),  # not empty: an empty record reads as EOF
        lambda: message(k="finished", result="forged")[: rng.randrange(1, 40)],  # truncated
        lambda: message(v=2),
        lambda: message(v="1"),
        lambda: message(v=None),
        lambda: message(k="log"),
        lambda: message(k="exec"),
        lambda: message(k=["beat"]),
        lambda: message(job=-1),
        lambda: message(att=-1),
        lambda: message(seq=-5),
        lambda: message(p=-1),
        lambda: message(job=True),
        lambda: message(job=1.0),
        lambda: message(seq="7"),
        lambda: message(seq=None),
        # A beat whose extra key nests past what this interpreter's JSON
        # parser takes (CPython 3.13's takes deeper than 3.11's: deep enough
        # that it parses, it is a valid beat, not garbage).
        lambda: b'{"v":1,"job":%d,"att":%d,"k":"beat","seq":1,"p":0,"x":%s}' % (
            me.job_id, me.attempt, _deep(_too_deep_to_parse(rng.randrange(2_000, 30_000))).encode()),
        lambda: _deep(30_000).encode(),
        lambda: b"[1, 2, 3]",
        lambda: b"null",
        lambda: b'"just a string"',
        lambda: b"\xff\xfe" + rng.randbytes(64),
        lambda: b"9" * 5000,  # past int()'s digit limit
        lambda: b'{"v":1,"job":1e999}',
        lambda: message(k="finished", result="x")[:-1] + b"\x00}",
    ]
    wrong_attempt = [
        lambda: message(job=victim, att=victim_attempt, k="finished", seq=10**6, result="forged"),
        lambda: message(job=victim, att=victim_attempt, k="failed", seq=10**6, error="forged"),
        lambda: message(job=victim, att=victim_attempt, k="progress", seq=10**6, p=10**6),
        lambda: message(att=me.attempt + 1, k="finished", seq=10**6, result="forged"),
        lambda: message(att=0, k="finished", seq=10**6, result="forged"),
        lambda: message(job=10**30, k="finished", seq=10**6, result="forged"),
    ]
    oversized = [
        lambda: message(pad="x" * rng.randrange(70_000, 150_000)),
        # One byte over the limit, otherwise a valid beat for this very attempt.
        lambda: (lambda m: m[:-1] + b' ' * (MAX_MESSAGE_BYTES + 1 - len(m)) + b"}")(message(seq=1, pad="")),
    ]
    for i in range(params["n"]):
        if i % 10 == 9:
            kind, choices = "oversized", oversized
        elif i % 4 == 0:
            kind, choices = "wrong_attempt", wrong_attempt
        else:
            kind, choices = "malformed", malformed
        send(rng.choice(choices)())
        sent[kind] += 1
    return sent
