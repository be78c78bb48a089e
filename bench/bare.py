"""The peers that are plain Python, each run as its own process so that it is
timed and measured exactly like a Phoenix master:

    python -m bench.bare fork N SLOTS          bare os.fork/os._exit/waitpid loop
    python -m bench.bare pool N SLOTS          multiprocessing.Pool(SLOTS, maxtasksperchild=1)
    python -m bench.bare receive SOCK COUNT    bare recvmsg loop with SO_PASSCRED
    python -m bench.bare senders SOCK N INTERVAL PIDFILE
                                               N forked children beating like Phoenix children

`fork` and `pool` end by printing `work_started=T` (CLOCK_MONOTONIC, which
is system-wide) and `work_seconds=S`: the peer's own account of its work,
interpreter start-up left out (the throughput figure's calibration reads it).

The sender children beat like a Phoenix child's heartbeat thread
(phoenix.wire.heartbeat.encode, jittered start, 5 Hz), each on a datagram socket
connected to the shared one (the design Phoenix had before a connection per
child), so the receiver gets the same stream of messages as a master does.
"""

from __future__ import annotations

import os
import sys
from typing import Callable


def bare_fork(n: int, slots: int) -> None:
    """The ceiling: fork, _exit at once, waitpid; `slots` at a time."""
    running = started = done = 0
    while done < n:
        while running < slots and started < n:
            if os.fork() == 0:
                os._exit(0)
            running += 1
            started += 1
        os.waitpid(-1, 0)
        running -= 1
        done += 1


def pool(n: int, slots: int) -> None:
    import multiprocessing

    from bench.apps import pool_noop

    with multiprocessing.get_context("fork").Pool(slots, maxtasksperchild=1) as p:
        p.map(pool_noop, range(n), chunksize=1)


def receive(path: str, count_path: str) -> None:
    """A bare recvmsg loop: epoll wake-up, drain the socket, take the sender's
    pid and uid from SCM_CREDENTIALS, count. The count goes to an 8-byte
    shared file once per wake-up, for the benchmark to read."""
    import mmap
    import selectors
    import socket
    import struct

    ucred = struct.Struct("3i")
    space = socket.CMSG_SPACE(ucred.size)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(path)
    sock.setblocking(False)
    with open(count_path, "r+b") as f:
        shared = mmap.mmap(f.fileno(), 8)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    count = 0
    recvmsg = sock.recvmsg
    pack_into = struct.Struct("q").pack_into
    unpack_from = ucred.unpack_from
    while True:
        selector.select()
        while True:
            try:
                data, ancdata, flags, _ = recvmsg(65537, space)
            except BlockingIOError:
                break
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, uid, _gid = unpack_from(cdata)
            count += 1
        pack_into(shared, 0, count)


def senders(path: str, n: int, interval: float, pidfile: str) -> None:
    """Fork `n` children that beat like Phoenix children: a daemon thread
    sends one small JSON datagram every `interval` seconds (after a random
    start-up delay) while the main thread sleeps. TERM stops them all, by pid."""
    import gc
    import importlib
    import random
    import signal
    import socket
    import threading
    import time

    importlib.import_module("phoenix")  # the same interpreter state a Phoenix child inherits
    from phoenix.wire import heartbeat as protocol

    gc.freeze()
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.connect(path)
            sender.setblocking(False)

            def beat(job: int = i + 1, sender: socket.socket = sender) -> None:
                time.sleep(random.uniform(0, min(interval, 0.2)))
                seq = 0
                while True:
                    seq += 1
                    try:
                        sender.send(protocol.encode(job, 1, "beat", seq, 0))
                    except BlockingIOError:
                        pass  # the shared queue is full (max_dgram_qlen): this beat is dropped
                    time.sleep(interval)

            threading.Thread(target=beat, daemon=True).start()
            while True:
                time.sleep(3600)
        pids.append(pid)
    with open(pidfile + ".tmp", "w") as f:
        f.write("\n".join(map(str, pids)))
    os.rename(pidfile + ".tmp", pidfile)

    def stop(signum: int, frame: object) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        signal.pause()


def timed(work: Callable[[int, int], None], n: int, slots: int) -> None:
    """Run a peer and print its own account of the work (interpreter start-up
    and imports left out): the calibration the throughput figure compares
    its end-to-end time against (bench.throughput.calibrate)."""
    import time

    t0 = time.monotonic()
    work(n, slots)
    print(f"work_started={t0:.6f}\nwork_seconds={time.monotonic() - t0:.6f}", flush=True)


def main(argv: list[str]) -> None:
    what = argv[0]
    if what == "fork":
        timed(bare_fork, int(argv[1]), int(argv[2]))
    elif what == "pool":
        timed(pool, int(argv[1]), int(argv[2]))
    elif what == "receive":
        receive(argv[1], argv[2])
    elif what == "senders":
        senders(argv[1], int(argv[2]), float(argv[3]), argv[4])
    else:
        raise SystemExit(f"unknown: {what}")


if __name__ == "__main__":
    main(sys.argv[1:])
