"""Heartbeat intake: read every waiting message, check who sent it, and note
what it says on the attempt it belongs to. The sender's pid and uid come
from the kernel (SO_PASSCRED), never from the message."""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable

from phoenix import log, protocol
from phoenix.attempts import Attempt
from phoenix.metrics import Counters

HEARTBEAT_BATCH = 512  # datagrams read per wake-up before other work gets a turn
# How long after a child reported a beat that waited more than an interval to
# be sent the master still counts itself overloaded (and defers heartbeat kills).
OVERLOAD_MEMORY = 2.0
MAX_TRACKED_GAP = 1024  # missing sequence numbers remembered per child, to uncount late arrivals


class HeartbeatIntake:
    def __init__(self, attempts: dict[int, Attempt], counters: Counters, uid: int,
                 heartbeat_interval: Callable[[], float]) -> None:
        self.attempts = attempts  # pid -> attempt: the master's table, read here, never changed
        self.counters = counters
        self.uid = uid
        self.heartbeat_interval = heartbeat_interval  # a reload may change it
        self.drained_at = 0.0  # monotonic: the last read that found the socket empty
        self.overloaded_until = 0.0  # monotonic: children's beats are waiting to get in

    def read(self, sock: socket.socket, now: float) -> None:
        for _ in range(HEARTBEAT_BATCH):
            try:
                data, ancdata, flags, _addr = sock.recvmsg(protocol.RECV_BUFFER_BYTES, protocol.CREDENTIALS_SPACE)
            except (BlockingIOError, InterruptedError):
                self.drained_at = now
                return
            self.accept(data, ancdata, flags, now)

    def accept(self, data: bytes, ancdata: list[Any], flags: int, now: float) -> None:
        credentials = protocol.sender_credentials(ancdata)
        if credentials is None:
            return self.counters.reject("no_credentials")
        pid, uid = credentials
        if uid != self.uid:
            return self.counters.reject("foreign_uid")
        attempt = self.attempts.get(pid)
        if attempt is None:
            return self.counters.reject("unknown_pid")
        if flags & socket.MSG_TRUNC or len(data) > protocol.MAX_MESSAGE_BYTES:  # the buffer has one byte to spare
            return self.counters.reject("oversized")
        message = protocol.decode(data)
        if message is None:
            return self.counters.reject("malformed")
        if message.job != attempt.job_id or message.attempt != attempt.number:
            return self.counters.reject("wrong_attempt")
        self.counters.beats += 1
        attempt.last_beat = now
        if message.seq > attempt.last_seq:
            if attempt.last_seq >= 0 and message.seq > attempt.last_seq + 1:
                self.note_gap(attempt, attempt.last_seq + 1, message.seq)
            attempt.last_seq = message.seq
        elif message.seq in attempt.missing:  # late, not lost: beats and the final travel on two sockets
            attempt.missing.discard(message.seq)
            self.counters.beats_missing -= 1
        is_final = message.kind in protocol.FINAL_KINDS
        if is_final:
            self.final_seq_arrived(attempt, message.seq)
        if message.progress > attempt.progress:
            attempt.progress = message.progress
            attempt.last_progress = now
        waited = message.body.get(protocol.WAITED)
        if (type(waited) is int or type(waited) is float) and waited > self.heartbeat_interval():
            self.overloaded_until = now + OVERLOAD_MEMORY
        if is_final and attempt.final is None:
            attempt.final = message.body
        elif log.log.isEnabledFor(logging.DEBUG):
            log.event(logging.DEBUG, "beat", pid=pid, job=attempt.key, attempt=attempt.number, seq=message.seq,
                      progress=message.progress)

    def note_gap(self, attempt: Attempt, first: int, end: int) -> None:
        """Sequence numbers first..end-1 were skipped: beats the child numbered
        that have not arrived. Counted now; uncounted if one turns up late."""
        self.counters.beats_missing += end - first
        if end - first <= MAX_TRACKED_GAP and len(attempt.missing) <= MAX_TRACKED_GAP:
            attempt.missing.update(range(first, end))

    def final_seq_arrived(self, attempt: Attempt, seq: Any) -> None:
        """The final message numbered `seq` arrived (on the socket or through the
        outbox). Neither it nor the beat numbered just before it is lost: that
        beat was in flight on the heartbeat thread's own socket, and may arrive
        after the outcome or be cut off by the child's exit right after it."""
        if type(seq) is not int:
            return
        for number in (seq, seq - 1):
            if number in attempt.missing:
                attempt.missing.discard(number)
                self.counters.beats_missing -= 1
