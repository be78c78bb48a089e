"""CPU of the heartbeat intake alone, per message, in-process: N real
SOCK_SEQPACKET socketpairs adopted as links, one plain beat queued on each,
then one `HeartbeatIntake.read` timed (process CPU), ROUNDS times. The
sends are not timed. Compare two checkouts by running it with each on
PYTHONPATH, interleaved:

    PYTHONPATH=. python -m bench.intake; PYTHONPATH=/path/to/other python -m bench.intake
"""

from __future__ import annotations

import socket
import sys
import time

import phoenix
from phoenix.master.attempts import Attempt
from phoenix.master.heartbeats import HeartbeatIntake
from phoenix.master.metrics import Counters
from phoenix.wire import heartbeat as protocol


def main(n: int = 1000, rounds: int = 60) -> float:
    attempts: dict[int, Attempt] = {}
    senders = []
    now = time.monotonic()
    intake = HeartbeatIntake(attempts, Counters(), 0, lambda _held: True, lambda: None)
    for i in range(n):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = 100000 + i  # never looked up as a process: the link is adopted with it
        attempts[pid] = Attempt(i + 1, 5000 + i, f"k{i}", "t", 1, pid, None, now, now, now)
        intake.adopt_link(theirs.detach(), pid)
        senders.append(ours)
    spent = 0.0
    for seq in range(rounds):
        for i, sock in enumerate(senders):
            sock.send(protocol.encode(5000 + i, 1, "beat", seq, 0))
        t0 = time.process_time()
        intake.read(time.monotonic())
        spent += time.process_time() - t0
    assert intake.counters.beats == n * rounds, intake.counters.beats
    intake.close()
    for sock in senders:
        sock.close()
    return spent / (n * rounds) * 1e6


if __name__ == "__main__":
    print(f"{phoenix.__file__}: {main(*map(int, sys.argv[1:])):.2f} us per message")
