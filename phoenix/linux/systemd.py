"""sd_notify, spoken directly: a datagram to $NOTIFY_SOCKET. Written by hand
because the protocol is one sendto() and the libraries for it pull in libsystemd."""

from __future__ import annotations

import os
import socket
import time

from phoenix.linux.clock import SYSTEM, Clock


def notify(*lines: str) -> bool:
    """Send `lines` to the service manager; False when there is none (not under systemd)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    except OSError:
        return False  # out of descriptors: this notice is lost, the next one goes (never a crash of the loop)
    try:
        sock.sendto("\n".join(lines).encode("utf-8", "backslashreplace"), address)  # a reason may quote a path
        return True
    except OSError:
        return False
    finally:
        sock.close()


def monotonic_usec() -> str:
    """MONOTONIC_USEC=..., which systemd wants with RELOADING=1 (CLOCK_MONOTONIC, microseconds)."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, when systemd asks this process for keep-alives."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


class Watchdog:
    """Keep-alives for systemd's WatchdogSec=: WATCHDOG=1 every half interval,
    sent from the master loop, so a loop that stops turning gets the master
    restarted. Inert when systemd did not ask (no WATCHDOG_USEC for this pid)."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self.interval = watchdog_interval()
        self.due = self.clock.monotonic() if self.interval else float("inf")

    def keep_alive(self) -> None:
        if self.interval is None:
            return
        now = self.clock.monotonic()
        if now >= self.due:
            notify("WATCHDOG=1")
            self.due = now + self.interval
