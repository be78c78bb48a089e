"""The fault-injection suite: `python -m pytest tests/faults` (part of the
README's test command), and `python -m pytest tests/faults --long` for the
long mode (1,000 children for 60 s under load, more rounds and datagrams).
PHOENIX_FAULTS_LONG=1 selects the long mode too, for runs where this conftest
is not loaded early enough for pytest to accept the flag (e.g. a bare
`pytest --long` from the repository root: name tests/faults on the command
line). The fixtures of tests/conftest.py (master_factory, the check that no
process is left behind) apply here as everywhere."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="fault-injection suite: run the long mode (1,000 children for 60 s, more rounds)")


@pytest.fixture(scope="session")
def long_mode(pytestconfig: pytest.Config) -> bool:
    try:
        flag = bool(pytestconfig.getoption("--long"))
    except ValueError:
        flag = False
    return flag or os.environ.get("PHOENIX_FAULTS_LONG", "") not in ("", "0")


@pytest.fixture
def machine_to_itself(tmp_path_factory: pytest.TempPathFactory):
    """For tests that load the whole machine (hundreds of children): under
    `pytest -n 2`, two tests that take this lock never run at the same time
    (the workers of one run share the parent of their base temp directory)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    with open(root / "machine-to-itself.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3}) ")


def log_time(line: str) -> float:
    """Wall-clock seconds of a master log line (text format, millisecond stamps)."""
    match = _STAMP.match(line)
    assert match, f"not a timestamped log line: {line!r}"
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")) + int(match.group(2)) / 1000


def log_lines(log: str, event: str, **fields: object) -> list[str]:
    """Log lines of `event` whose key=value fields include `fields`."""
    found = []
    for line in log.splitlines():
        match = _STAMP.match(line)
        if not match:
            continue
        words = line.split()
        if len(words) < 4 or words[3] != event:
            continue
        if all(f"{k}={v}" in words for k, v in fields.items()):
            found.append(line)
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(name: str, **figures: object) -> None:
    """One line of measured figures (shown with -s, and in -rA summaries)."""
    print(f"\nFIGURES {name}: " + " ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of the test's own, to fill up (or to make read-only and back)."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"needs permission to mount a tmpfs: {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)
