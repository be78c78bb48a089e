"""The memory watchdog (master/memory.py) in process, on phoenix.testing's
FakeClock, against real processes' resident memory: it kills the one past
its limit (reason max_memory) and keeps looking at the one below it, at the
gap rules/memory.next_look gives."""

from __future__ import annotations

import subprocess
import sys

from phoenix.master.attempts import Attempt, AttemptTable
from phoenix.master.memory import MemoryWatchdog
from phoenix.master.metrics import Counters
from phoenix.rules.memory import FIRST_LOOK
from phoenix.rules.states import KillReason
from phoenix.testing import FakeClock
from tests.conftest import wait_for

M = 1024**2
HOLDS = "import sys, time; held = b'x' * (int(sys.argv[1]) << 20); print('ready', flush=True); time.sleep(60)"


def holding(megabytes: int) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", HOLDS, str(megabytes)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_the_attempt_past_its_limit_is_killed_and_the_one_below_is_looked_at_again():
    clock, table, killed = FakeClock(), AttemptTable(), []
    big, small = holding(80), holding(0)
    try:
        watchdog = MemoryWatchdog(table, Counters(), clock.monotonic, lambda: 64 * M, killed.append)
        for n, process in enumerate((big, small), start=1):
            attempt = Attempt(n, n, f"job-{n}", "m:f", 1, process.pid, None, 0.0, 0.0, 0.0)
            table.add(attempt)
            watchdog.watch(attempt)
        assert watchdog.next_deadline() == clock.monotonic() + FIRST_LOOK
        watchdog.look_if_due()
        assert killed == []  # not due yet
        clock.advance(FIRST_LOOK)
        watchdog.look_if_due()
        assert [a.pid for a in killed] == [big.pid]
        assert killed[0].kill_reason == KillReason.MAX_MEMORY and "over the job's 64M limit" in killed[0].kill_detail
        assert watchdog.next_deadline() is not None and watchdog.next_deadline() > clock.monotonic()  # the small one
        table.remove(small.pid)  # its attempt ended: no more looks at it
        clock.advance(1.0)
        watchdog.look_if_due()
        assert watchdog.next_deadline() is None and len(killed) == 1
    finally:
        for process in (big, small):
            process.kill()
            process.wait()
    wait_for(lambda: big.poll() is not None and small.poll() is not None, what="both processes gone")
