"""The master survives its clients: hundreds of idle connections on the
control socket, a master out of file descriptors, clients that send a request
a byte at a time, never read their reply, or hang up early. The master stays
up, `phoenix status` is answered while hostile clients hold connections, and
jobs still run. And a master that does die of a bug says so (exit status 1,
`code=1` in its log)."""

from __future__ import annotations

import json
import os
import resource
import select
import selectors
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from phoenix.wire import control
from phoenix.wire.control import MAX_CLIENTS, REQUEST_TIMEOUT, ControlServer
from tests.conftest import phoenix_cli, wait_for
from tests.faults.conftest import log_lines, report
from tests.faults.helpers import live, submit

APP = "tests.apps.faulty:app"
PATIENT = ("--heartbeat-timeout", "10")
STATUS_DEADLINE = 10.0  # seconds for a whole `phoenix status` command, interpreter start included


def connect(path: Path, timeout: float = 10.0) -> socket.socket:
    """A connection, once the listen backlog has room (a full one refuses with EAGAIN)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def wait_all_hung_up(socks: list[socket.socket], timeout: float) -> None:
    """Read every socket until the master closes it (an error line may come first)."""
    open_socks = {s.fileno(): s for s in socks}
    poller = select.poll()
    for fd in open_socks:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while open_socks:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(open_socks)} of {len(socks)} connections still open after {timeout} s"
        for fd, _event in poller.poll(left * 1000):
            try:
                data = open_socks[fd].recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                poller.unregister(fd)
                del open_socks[fd]


def fds_of(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def settled_fds_of(pid: int) -> set[int]:
    """The descriptors of an idle master, once the last request's connection is closed."""
    def same_twice() -> set[int] | None:
        first = fds_of(pid)
        time.sleep(0.1)
        return first if fds_of(pid) == first else None

    return wait_for(same_twice, timeout=10, what="the master's descriptors to settle")


def set_soft_fd_limit(pid: int, soft: int) -> None:
    _soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def timed_status(state_dir: Path) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    result = phoenix_cli("status", "--json", state_dir=state_dir, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), elapsed


def rejected_since(master, before: dict[str, int]) -> dict[str, int]:
    now = live(master)["master"]["rejected"]
    return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}


def test_hundreds_of_idle_clients_under_a_256_fd_limit(master_factory, state_dir):
    master = master_factory(*PATIENT, app=APP)
    set_soft_fd_limit(master.pid, 256)  # as `ulimit -n 256`
    before = live(master)["master"]["rejected"]
    held: list[socket.socket] = []
    try:
        for _ in range(320):
            held.append(connect(state_dir / "control.sock"))
        assert master.proc.poll() is None, master.log()[-3000:]
        # While they are held: the operator is answered, and work goes on.
        status, elapsed = timed_status(state_dir)
        assert status["master"]["pid"] == master.pid and elapsed < STATUS_DEADLINE
        submit(master, "work", {"s": 0.2}, "through-the-crowd")
        assert master.wait_jobs_done(["through-the-crowd"], timeout=20)["through-the-crowd"]["state"] == "finished"
        fds_held = len(fds_of(master.pid))
        assert fds_held < MAX_CLIENTS + 40, fds_held
        # The newest ones are closed too once they have sent nothing for REQUEST_TIMEOUT.
        wait_all_hung_up(held, timeout=REQUEST_TIMEOUT + 15)
    finally:
        for sock in held:
            sock.close()
    rejected = rejected_since(master, before)
    assert rejected.get("control connection evicted", 0) >= 320 - MAX_CLIENTS, rejected
    assert rejected.get("control request timeout", 0) >= 1, rejected
    assert len(log_lines(master.log(), "control_overloaded")) <= 2  # rate-limited
    assert master.proc.poll() is None
    report("idle_control_clients", connections=320, fd_limit=256, master_fds_while_held=fds_held,
           status_s=f"{elapsed:.2f}", **{k.replace(" ", "_"): v for k, v in rejected.items()})


def test_out_of_descriptors_the_newcomer_is_shed_and_the_master_carries_on(master_factory, state_dir):
    master = master_factory(*PATIENT, app=APP)
    before = live(master)["master"]["rejected"]
    in_use = settled_fds_of(master.pid)
    first_free = min(n for n in range(len(in_use) + 1) if n not in in_use)
    set_soft_fd_limit(master.pid, first_free)  # the next descriptor the master opens fails: EMFILE
    for _ in range(20):
        with pytest.raises(control.ControlError):
            control.request(state_dir / "control.sock", {"cmd": "status"}, timeout=5.0)
    assert master.proc.poll() is None, master.log()[-3000:]
    set_soft_fd_limit(master.pid, 1024)
    rejected = rejected_since(master, before)
    assert rejected.get("control connection shed", 0) >= 20, rejected
    warnings = log_lines(master.log(), "control_overloaded", reason="control_shed")
    assert len(warnings) == 1, warnings  # one warning for the lot
    submit(master, "work", {"s": 0.1}, "after-the-shortage")
    assert master.wait_jobs_done(["after-the-shortage"], timeout=20)["after-the-shortage"]["state"] == "finished"
    report("control_fd_exhausted", shed=rejected["control connection shed"], warnings=len(warnings))


def test_out_of_descriptors_with_clients_held_the_oldest_go(master_factory, state_dir):
    master = master_factory(*PATIENT, app=APP)
    in_use = settled_fds_of(master.pid)
    set_soft_fd_limit(master.pid, max(in_use) + 12)  # room for a few connections, not 60
    before = live(master)["master"]["rejected"]
    held: list[socket.socket] = []
    try:
        for _ in range(60):
            held.append(connect(state_dir / "control.sock"))
        status, elapsed = timed_status(state_dir)
        assert status["master"]["pid"] == master.pid and elapsed < STATUS_DEADLINE
        submit(master, "work", {"s": 0.1}, "while-short")
        assert master.wait_jobs_done(["while-short"], timeout=20)["while-short"]["state"] == "finished"
    finally:
        for sock in held:
            sock.close()
    rejected = rejected_since(master, before)
    assert rejected.get("control connection evicted", 0) >= 30, rejected
    assert log_lines(master.log(), "control_overloaded", reason="control_fd_shortage")
    assert master.proc.poll() is None
    report("control_fd_shortage_with_clients", connections=60, evicted=rejected["control connection evicted"],
           status_s=f"{elapsed:.2f}")


# -- slow, stuck and rude clients, against a ControlServer on a real socket ---------


class Served:
    """A ControlServer on a real Unix socket, turned by hand as the master's loop turns it."""

    def __init__(self, tmp_path: Path, timeout: float = 0.5) -> None:
        self.path = tmp_path / "control.sock"
        self.selector = selectors.DefaultSelector()
        self.rejected: Counter[str] = Counter()
        self.slowest_step = 0.0
        self.server = ControlServer(control.bind(self.path), self.selector, self.handle,
                                    lambda why: self.rejected.update([why]), timeout=timeout)

    @staticmethod
    def handle(request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "big":
            return {"ok": True, "pad": "x" * (4 << 20)}  # far more than a socket buffer holds
        if request.get("cmd") == "boom":
            raise RuntimeError("a handler bug")
        return {"ok": True, "cmd": request.get("cmd")}

    def turn(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (now := time.monotonic()) < end:
            wait = min(end, self.server.next_deadline()) - now
            for key, _mask in self.selector.select(max(0.0, wait)):
                started = time.monotonic()
                key.data()
                self.slowest_step = max(self.slowest_step, time.monotonic() - started)
            self.server.expire(time.monotonic())

    def close(self) -> None:
        self.server.close()
        self.server.sock.close()
        if self.server.reserve_fd is not None:
            os.close(self.server.reserve_fd)
        self.selector.close()


def answer(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data)


def test_slow_stuck_and_rude_clients_never_block_the_loop(tmp_path):
    served = Served(tmp_path, timeout=1.5)
    try:
        never_reads = connect(served.path)
        never_reads.sendall(b'{"cmd": "big"}\n')
        slowloris = connect(served.path)
        slowloris.sendall(b'{"cmd"')
        rude = connect(served.path)
        rude.sendall(b'{"cmd": "big"}\n')
        rude.close()  # gone before its reply: EPIPE on send
        buggy = connect(served.path)
        buggy.sendall(b'{"cmd": "boom"}\n')
        served.turn(0.2)
        slowloris.sendall(b":")  # still trickling, never a whole line
        polite = connect(served.path)
        polite.sendall(b'{"cmd": "status"}\n')
        served.turn(0.1)
        assert answer(polite) == {"ok": True, "cmd": "status"}  # answered while the others hang on
        reply = answer(buggy)
        assert reply["ok"] is False and "a handler bug" in reply["error"]
        served.turn(3.5)  # past every deadline
        assert not served.server.deadlines and not served.server.buffers and not served.server.replies
        late = answer(slowloris)
        assert late["ok"] is False and "no complete request" in late["error"]
        assert served.rejected == {"control request timeout": 2, "failed control request": 1}, served.rejected
        # No step waits for a client (serialising the 4 MB reply is the slowest one).
        assert served.slowest_step < 0.5, f"one step of the loop took {served.slowest_step:.3f} s"
        for sock in (never_reads, slowloris, buggy, polite):
            sock.close()
    finally:
        served.close()


def test_a_full_server_evicts_the_oldest_and_serves_the_newcomer(tmp_path):
    served = Served(tmp_path, timeout=30.0)
    held = []
    try:
        for _ in range(MAX_CLIENTS + 10):
            held.append(connect(served.path))
            served.turn(0.005)
        assert len(served.server.deadlines) == MAX_CLIENTS
        newcomer = connect(served.path)
        newcomer.sendall(b'{"cmd": "status"}\n')
        served.turn(0.1)
        assert answer(newcomer) == {"ok": True, "cmd": "status"}
        assert served.rejected["control connection evicted"] == 11
        assert held[0].recv(65536).startswith(b'{"ok": false, "error": "too many control connections')
        for sock in [*held, newcomer]:
            sock.close()
    finally:
        served.close()


# -- a master that dies says so --------------------------------------------------------


def test_a_master_that_crashes_exits_1_and_logs_code_1(master_factory):
    master = master_factory(app="tests.apps.untrusted:crashing", start=False)
    master.start(wait_ready=False)
    assert master.wait_exit() == 1
    log = master.log()
    assert any('error="RuntimeError: a bug in the master loop"' in line
               for line in log_lines(log, "crash")), log[-3000:]
    assert "Traceback" in log and log_lines(log, "exit", code=1), log[-3000:]
    assert not log_lines(log, "exit", code=0)
