"""A reader's look at the master's lock (`phoenix status`, the dashboard's
masters page every 2 s: flock LOCK_SH for a moment) never keeps a master
from starting, and a start that is refused says what is known of the holder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from phoenix.linux import pidfile
from phoenix.linux.pidfile import AlreadyRunning, PidFile
from tests.conftest import PYTHON

# Holds the lock file (argv[1]) with argv[2]'s lock for argv[3] seconds, and says so first.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, getattr(fcntl, sys.argv[2]))
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def hold(lockfile: Path, lock: str, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([PYTHON, "-c", HOLDER, str(lockfile), lock, str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def ended(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def test_the_lock_is_taken_once_a_readers_probe_lets_go(tmp_path: Path) -> None:
    lockfile, pid_path = tmp_path / "phoenix.lock", tmp_path / "phoenix.pid"
    os.close(pidfile.open_lock_file(lockfile))
    probe = hold(lockfile, "LOCK_SH", 0.5)  # a dashboard's or a status's look, slowed down
    try:
        taken = PidFile(pid_path, lockfile)
        taken.acquire()  # refused, it would raise AlreadyRunning
    finally:
        ended(probe)
    assert pidfile.lock_held(lockfile) and pidfile.read_pid(pid_path) == os.getpid()
    taken.release()


def test_a_master_starts_while_a_reader_probes_its_lock(master_factory, state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)
    lockfile = state_dir / "phoenix.lock"
    os.close(pidfile.open_lock_file(lockfile))  # as a master before made it
    # Held from before the master's start until about when it takes the lock (its imports take most of a second).
    probe = hold(lockfile, "LOCK_SH", 1.2)
    try:
        master = master_factory()  # waits for ready: refused, it would raise
        assert master.proc is not None and master.proc.poll() is None
    finally:
        ended(probe)


def test_a_refused_start_names_no_pid_it_does_not_know(tmp_path: Path) -> None:
    lockfile, pid_path = tmp_path / "phoenix.lock", tmp_path / "phoenix.pid"
    os.close(pidfile.open_lock_file(lockfile))
    holder = hold(lockfile, "LOCK_EX", 60)  # a master that has not written its pidfile (yet)
    try:
        with pytest.raises(AlreadyRunning) as refused:
            PidFile(pid_path, lockfile).acquire()
    finally:
        ended(holder)
    assert "pid None" not in str(refused.value)
    assert f"already running on {tmp_path} (its pidfile names no live process yet)" in str(refused.value)
