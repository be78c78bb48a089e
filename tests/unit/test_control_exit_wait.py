"""An exiting PID 1 waits for the `phoenix stop` processes it answered to
exit first (control.report_exit's linger), since its own exit would kill
them: the wait ends when they exit, or at its deadline, whichever is first."""

from __future__ import annotations

import subprocess
import sys
import time

from phoenix.linux.clock import SYSTEM
from phoenix.wire import control


def _sleeper(seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def test_the_wait_ends_when_the_processes_exit():
    quick = [_sleeper(0.2), _sleeper(0.4)]
    try:
        began = time.monotonic()
        control._wait_exits([p.pid for p in quick], began + 20.0, SYSTEM)
        assert 0.3 <= time.monotonic() - began < 10.0  # both waited for, the slower one included
        assert all(p.poll() is not None for p in quick)  # exited (the pidfd turns readable at the exit)
    finally:
        for p in quick:
            p.kill()
            p.wait()


def test_the_wait_ends_at_its_deadline_for_a_process_that_stays():
    stays = _sleeper(30)
    try:
        began = time.monotonic()
        control._wait_exits([stays.pid], began + 0.3, SYSTEM)
        assert 0.3 <= time.monotonic() - began < 5.0 and stays.poll() is None
    finally:
        stays.kill()
        stays.wait()


def test_a_process_gone_already_is_not_waited_for():
    gone = _sleeper(0)
    gone.wait()  # reaped: its pid names no process
    began = time.monotonic()
    control._wait_exits([gone.pid], began + 5.0, SYSTEM)
    assert time.monotonic() - began < 1.0
