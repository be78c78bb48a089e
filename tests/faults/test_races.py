"""Pidfile and socket races: two masters started at the same instant on one
state directory, socket files left by a SIGKILLed master, and socket paths
held by a live process that is not a master. (A foreign live pid in the
pidfile is tests/test_cli.py::test_stale_pidfile_is_replaced_with_a_warning.)"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, Master, wait_for
from tests.faults.conftest import report
from tests.faults.helpers import live, submit

APP = "tests.apps.faulty:app"
# Started by the test, each waits on its stdin for the word to go, then execs
# `phoenix start`: both are past interpreter start-up before either races.
LAUNCHER = ("import os, sys; sys.stdout.write('r'); sys.stdout.flush(); os.read(0, 1); "
            "os.execv(sys.argv[1], sys.argv[1:])")


def start_together(state_dir: Path, logs: list[Path]) -> list[subprocess.Popen[bytes]]:
    procs = []
    for log in logs:
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(
                [PYTHON, "-c", LAUNCHER, PYTHON, "-m", "phoenix", "start", APP, "--state-dir", str(state_dir)],
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=out,
            ))
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.read(1) == b"r"
    for proc in procs:  # go
        assert proc.stdin is not None
        proc.stdin.write(b"g")
        proc.stdin.flush()
    return procs


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
    return proc.returncode


def test_two_starts_at_the_same_instant_exactly_one_wins(tmp_path, long_mode):
    rounds = 20 if long_mode else 4
    winners = []
    dead = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    for n in range(rounds):
        state_dir = tmp_path / f"state-{n}"
        if n % 2:  # a dead master's pidfile, as after a crash: the loser must not name that pid
            state_dir.mkdir(mode=0o700)
            (state_dir / "phoenix.pid").write_text(f"{dead_pid}\n")
        logs = [tmp_path / f"round-{n}-{side}.log" for side in ("a", "b")]
        procs = start_together(state_dir, logs)
        try:
            # The loser exits 1 at once; the winner runs until told to stop.
            (loser_index,) = wait_for(
                lambda procs=procs: next(((i,) for i, p in enumerate(procs) if p.poll() is not None), None),
                timeout=30, what="one of the two masters to give up")
            loser, winner = procs[loser_index], procs[1 - loser_index]
            assert loser.wait() == 1
            message = logs[loser_index].read_text()
            assert message.startswith("phoenix: error: a Phoenix master is already running on"), message
            assert f"already running on {state_dir} (pid {winner.pid})" in message, message
            assert "Traceback" not in message
            winner_log = logs[1 - loser_index]
            wait_for(lambda winner_log=winner_log: "ready generation=1 " in winner_log.read_text(), timeout=30,
                     what="the winner to be ready")
            assert winner.poll() is None
            assert (state_dir / "phoenix.pid").read_text().strip() == str(winner.pid)
            status = live(Master(state_dir, APP))["master"]
            assert status["pid"] == winner.pid and status["generation"] == 1
            winners.append(loser_index)
        finally:
            codes = [stop(p) for p in procs]
        assert codes[1 - loser_index] == 0
    report("start_race", rounds=rounds, exactly_one_winner=len(winners), first_launched_won=winners.count(1))


def test_sockets_left_by_a_sigkilled_master_do_not_block_the_next_start(master_factory, state_dir):
    first = master_factory(app=APP)
    first.signal(signal.SIGKILL)
    assert first.wait_exit() == -signal.SIGKILL
    for name in ("phoenix.sock", "control.sock"):  # nobody cleaned up
        assert (state_dir / name).exists()
    assert (state_dir / "phoenix.pid").read_text().strip() == str(first.pid)

    second = master_factory(app=APP, start=False).start(wait_ready=False)
    second.wait_log("ready generation=2 ", what="the second master to be ready")
    assert f"stale_pidfile path={state_dir / 'phoenix.pid'} pid={first.pid} reason=no such process" in second.log()
    assert live(second)["master"]["pid"] == second.pid
    submit(second, "work", {"s": 0.1}, "after-restart")  # and heartbeats reach it on the new socket
    assert second.wait_jobs_done(["after-restart"], timeout=20)["after-restart"]["state"] == "finished"


@pytest.mark.parametrize("name, kind", [
    ("phoenix.sock", socket.SOCK_DGRAM),
    ("control.sock", socket.SOCK_STREAM),
    ("phoenix.sock", socket.SOCK_STREAM),  # a live socket of the other type is just as taken
    ("control.sock", socket.SOCK_DGRAM),
], ids=["heartbeat-dgram", "control-stream", "heartbeat-path-stream", "control-path-dgram"])
def test_a_socket_path_held_by_a_live_foreign_process_is_refused(state_dir, tmp_path, name, kind):
    state_dir.mkdir(mode=0o700)
    path = state_dir / name
    foreign = socket.socket(socket.AF_UNIX, kind)
    try:
        foreign.bind(str(path))
        if kind == socket.SOCK_STREAM:
            foreign.listen(1)
        log = tmp_path / "start.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([PYTHON, "-m", "phoenix", "start", APP, "--state-dir", str(state_dir)],
                                    cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            pytest.fail(f"phoenix start took over {path}, held by a live process:\n{log.read_text()[-2000:]}")
        text = log.read_text()
        assert code == 2, text
        assert f"phoenix: error: {path} is held by another live process" in text, text
        assert "Traceback" not in text
        # The failed start leaves no pidfile naming a dead master behind.
        assert not (state_dir / "phoenix.pid").exists()
        # The foreign process keeps its socket: still there, still answering.
        assert path.exists()
        probe = socket.socket(socket.AF_UNIX, kind)
        try:
            probe.connect(str(path))
        finally:
            probe.close()
    finally:
        foreign.close()
