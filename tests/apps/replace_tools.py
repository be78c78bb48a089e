"""Test-side helpers shared by the replacement, adoption and systemd/daemon
tests: the live status over the control socket, /proc facts, the gates of
tests.apps.replace, and stopping masters that are not the test's children
(a fork-mode successor, a daemon)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from phoenix.linux import procfs
from phoenix.linux.paths import StatePaths
from phoenix.linux.pidfile import read_pid  # noqa: F401 - re-exported for the tests
from phoenix.linux.procfs import stat_fields  # noqa: F401 - re-exported for the tests
from phoenix.wire import control
from tests.conftest import wait_for

APP = "tests.apps.replace:app"
UNTIL = "tests.apps.replace:until"
QUICK = "tests.apps.replace:quick"
# Deadlines of the waits for a master to start, replace itself or finish a job: generous,
# because they only matter when something is wrong, and the whole suite runs
# on two cores beside load tests of hundreds of children (a preflight can take seconds there).
SLOW = 60.0
HEARTBEAT_TIMEOUT = 2.0  # tests.apps.replace's: generous, so that a loaded test machine causes no false kill


def live(state_dir: Path) -> dict[str, Any] | None:
    """The running master's own status (as `phoenix status --json` gets it), or None."""
    try:
        return control.request(StatePaths(state_dir).control_socket, {"cmd": "status"}, timeout=2.0)
    except control.ControlError:
        return None


def wait_generation(state_dir: Path, generation: int, timeout: float = SLOW) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        status = live(state_dir)
        return status if status and status["master"]["generation"] >= generation else None

    return wait_for(ready, timeout, f"a master of generation {generation} to answer")


def alive(pid: int) -> bool:
    return procfs.is_same_process(pid, None)


def zombies_of(parent: int) -> list[int]:
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and procfs.state(int(entry)) == "Z" and procfs.parent_pid(int(entry)) == parent]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def signals_pending(pid: int) -> set[int]:
    """Signals pending for the process as a whole (ShdPnd) or its main thread (SigPnd)."""
    pending = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("ShdPnd:", "SigPnd:")):
            pending |= int(line.split()[1], 16)
    return {n for n in range(1, 65) if pending & (1 << (n - 1))}


def lock_is_held(lockfile: Path) -> bool:
    """True when some process holds the master's flock on `lockfile`."""
    fd = os.open(lockfile, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def stop_foreign_master(pid: int, timeout: float = SLOW) -> None:
    """TERM a master that is not our child (so no waitpid) and wait until it is gone; KILL if it hangs."""
    if not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(lambda: not alive(pid), timeout, f"master {pid} to exit")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        raise


def kill_pids(pids: list[int]) -> None:
    """Last-resort clean-up of processes this test started (by pid)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def runs(path: Path) -> list[dict[str, Any]]:
    """Job starts recorded by tests.apps.replace through $PHOENIX_TEST_RUNS."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


class Gates:
    """The gates of tests.apps.replace, in one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return {"PHOENIX_TEST_GATES": str(self.dir)}

    def hold(self, role: str) -> None:
        (self.dir / f"{role}.waiting").unlink(missing_ok=True)
        (self.dir / f"{role}.hold").touch()

    def waiting(self, role: str, timeout: float = SLOW) -> int:
        """Wait until a process is held at the gate; its pid."""
        path = self.dir / f"{role}.waiting"
        wait_for(path.exists, timeout, f"a {role} process to reach its gate")
        return int(path.read_text())

    def release(self, role: str) -> None:
        (self.dir / f"{role}.hold").unlink(missing_ok=True)

    def die(self, role: str, on: bool = True) -> None:
        path = self.dir / f"{role}.die"
        path.touch() if on else path.unlink(missing_ok=True)


@pytest.fixture(name="gates")
def gates_fixture(master_factory, tmp_path):
    """Gates in tmp_path, released before the test's masters are stopped (a
    failing test must not leave a master held at a gate, deaf to TERM)."""
    gates = Gates(tmp_path / "gates")
    yield gates
    for hold in gates.dir.glob("*.hold"):
        hold.unlink()
