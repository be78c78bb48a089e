"""Heartbeat intake: accept each child's connection, check who made it, read
every waiting message, and note what it says on the attempt it belongs to.

The sender's pid and uid come from the kernel (SO_PEERCRED, taken at
accept), never from the message: every message on a connection is the
connecting process's. A connection from a pid that is no running attempt's,
or from another uid, is closed at accept; one that sends anything malformed
or not its own attempt's is closed at that message. Each child has its own
kernel queue, so a master that falls behind never makes children's beats
wait or vanish in a shared one; and one epoll set over the listening socket
and every connection lets the master read everything waiting, in one
call, before it judges any deadline."""

from __future__ import annotations

import errno
import json
import logging
import select
import selectors
import socket
from dataclasses import dataclass
from typing import Callable, Mapping

from phoenix import log
from phoenix.child.longjobs import progress_value
from phoenix.linux.clock import SYSTEM, Clock
from phoenix.master.attempts import Attempt
from phoenix.master.metrics import Counters
from phoenix.wire import heartbeat as protocol

# Rounds of "one message from every ready connection" per read: a child that
# floods its connection cannot keep the loop here; the rest is read on the next
# turn (the epoll set stays readable).
READ_ROUNDS = 8
# After a read that found only beats, the next waits this long, so that one
# wake-up reads a batch (each connection queues its own beats meanwhile; every
# deadline is judged after a read anyway). Not after a final message (its
# child waits for the ack to exit), a new connection or an EOF (a child
# starting or ending: a final may follow at once).
BEAT_BATCH = 0.02
ACCEPT_BATCH = 256  # connections accepted per round, for the same reason
MAX_TRACKED_GAP = 1024  # missing sequence numbers remembered per child, to uncount late arrivals
_READABLE = select.EPOLLIN | select.EPOLLRDHUP


@dataclass(slots=True, eq=False)
class Link:
    """One child's connection and the pid the kernel vouched for at accept."""

    sock: socket.socket
    pid: int
    plain_prefix: bytes = b""  # plain_of's plain beat up to the seq (protocol.plain_beat)
    plain_of: Attempt | None = None


@dataclass(slots=True, eq=False)
class HeldFinal:
    """A final message (or a checkpoint) accepted from a link, to be made durable and then acknowledged."""

    link: Link
    attempt: Attempt
    seq: int
    checkpoint: str | None = None  # a checkpoint's JSON; None: a final


# Writes checkpoints to the journal in one transaction: (job id, attempt number, seq, JSON) each.
HoldCheckpoints = Callable[[list[tuple[int, int, int, str]]], bool]


class HeartbeatIntake:
    def __init__(self, attempts: Mapping[int, Attempt], counters: Counters, uid: int,
                 hold_finals: Callable[[list[Attempt]], bool], child_closed: Callable[[], None],
                 clock: Clock = SYSTEM, hold_checkpoints: HoldCheckpoints | None = None) -> None:
        self.clock = clock
        self.attempts = attempts  # pid -> attempt: the master's table, read here, never changed
        self.counters = counters
        self.uid = uid
        # Writes the finals to the journal in one transaction; False: not
        # durable (a storage outage), so not acknowledged: the child falls back to the outbox.
        self.hold_finals = hold_finals
        self.child_closed = child_closed  # EOF from a child: it exited (or closed); reap soon
        self.hold_checkpoints = hold_checkpoints  # durable, as hold_finals; None: checkpoints are refused
        # Attempts whose phoenix.progress() changed since the journal last had
        # it, by attempt id (longjobs.ProgressWriter writes them at a bounded rate).
        self.reported: dict[int, Attempt] = {}
        self.poller = select.epoll()
        self.listener: socket.socket | None = None
        self.links: dict[int, Link] = {}  # fd -> link
        self.to_ack: list[HeldFinal] = []
        # Finals the journal did not take (an outage), by attempt id: their
        # children wait for the ack on these connections (retry_unheld).
        self.unheld: dict[int, HeldFinal] = {}
        self.selector: selectors.BaseSelector | None = None  # the master's loop, while it watches us
        self.resume_at = 0.0  # monotonic: when watching resumes after a batch wait (0: watching)
        # Every message is received into this one buffer: no allocation per beat.
        self.buffer = bytearray(protocol.RECV_BUFFER_BYTES)
        self.debug = False
        # Monotonic: since when a connection waits in the backlog that the
        # master cannot accept (out of descriptors or memory); None: none does.
        self.accept_short_since: float | None = None

    def fileno(self) -> int:
        """The epoll set: readable when the listener or any connection is."""
        return self.poller.fileno()

    # -- in the master's loop -----------------------------------------------------------

    def watch(self, selector: selectors.BaseSelector) -> None:
        """Wake the master's loop when anything is readable."""
        self.selector, self.resume_at = selector, 0.0
        selector.register(self, selectors.EVENT_READ, self.ready)

    def unwatch(self) -> None:
        """Stop waking the loop (fork mode: the new master reads the connections now)."""
        if self.selector is not None and not self.resume_at:
            self.selector.unregister(self)
        self.selector, self.resume_at = None, 0.0

    def ready(self) -> None:
        now = self.clock.monotonic()
        if self.read(now) or self.selector is None:
            return  # children starting or ending: stay on it
        self.selector.unregister(self)
        self.resume_at = now + BEAT_BATCH

    def next_deadline(self) -> float | None:
        return self.resume_at or None

    def resume_if_due(self, now: float) -> None:
        if self.resume_at and now >= self.resume_at and self.selector is not None:
            self.selector.register(self, selectors.EVENT_READ, self.ready)
            self.resume_at = 0.0

    def listen(self, sock: socket.socket) -> None:
        """Take `sock` as the listening socket. Connections accepted from an
        earlier one stay; whatever still waits in its backlog is accepted first."""
        old, self.listener = self.listener, sock
        if old is not None:
            self._accept(old)
            self.poller.unregister(old)
            old.close()
        sock.setblocking(False)
        self.poller.register(sock, select.EPOLLIN)

    def adopt_link(self, fd: int, pid: int) -> None:
        """A connection handed over by the previous image (fd -> the pid it was accepted for)."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sock.set_inheritable(False)  # made inheritable for the exec only
        self._add(Link(sock, pid))

    def handover(self) -> dict[str, int]:
        """The connections to hand to the next image, by name: {"link.PID.N": fd}
        (a pid may hold more than one connection for a moment: a reconnect)."""
        return {f"link.{link.pid}.{fd}": fd for fd, link in self.links.items()}

    def close(self) -> None:
        for link in list(self.links.values()):
            self._close(link)
        if self.listener is not None:
            self.listener.close()
        self.poller.close()

    # -- reading --------------------------------------------------------------------

    def read(self, now: float) -> bool:
        """Read everything waiting (bounded), then acknowledge the finals held.
        False if it read nothing but beats and progress."""
        listener = self.listener.fileno() if self.listener is not None else -1
        links = len(self.links)
        closed = False
        self.debug = log.log.isEnabledFor(logging.DEBUG)  # once per read, not per beat
        for _ in range(READ_ROUNDS):
            events = self.poller.poll(0, len(self.links) + 1)  # every ready connection at once
            if not events:
                break
            for fd, _mask in events:
                if fd == listener:
                    self._accept(self.listener)  # type: ignore[arg-type]
                else:
                    link = self.links.get(fd)
                    if link is not None:
                        closed |= not self._receive(link, now)
        if self.to_ack:
            self._acknowledge()
            return True
        return closed or len(self.links) != links

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                self.accept_short_since = None  # the backlog is empty: every child that connected is heard
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The child's connection waits in the backlog, its beats queued
                    # on it: its silence is the master's until it is accepted (hangs.py).
                    self.counters.reject("fd_shortage")
                    if self.accept_short_since is None:
                        self.accept_short_since = self.clock.monotonic()
                    return
                raise
            pid, uid = protocol.peer_credentials(sock)
            if uid != self.uid:
                self.counters.reject("foreign_uid")
                sock.close()
            elif pid not in self.attempts:
                self.counters.reject("unknown_pid")
                sock.close()
            else:
                sock.setblocking(False)
                self._add(Link(sock, pid))
                self.attempts[pid].connection_closed_at = None  # connected again

    def give_grace(self, now: float) -> None:
        """Silence until `now` was not the children's doing (an adoption, a
        master that was not running, a socket file put back): their heartbeat
        and stall limits count from now."""
        for attempt in self.attempts.values():
            attempt.fresh_grace(now)

    def excuse(self, away: float, now: float) -> None:
        """The master was not running for `away` seconds: that much of each child's silence is not its own."""
        for attempt in self.attempts.values():
            attempt.excuse(away, now)

    def has_link(self, pid: int) -> bool:
        """Whether the child `pid` has a connection open to the master (a linear
        scan: asked only before a heartbeat kill)."""
        return any(link.pid == pid for link in self.links.values())

    def _add(self, link: Link) -> None:
        self.links[link.sock.fileno()] = link
        self.poller.register(link.sock, _READABLE)

    def _close(self, link: Link) -> None:
        del self.links[link.sock.fileno()]
        self.poller.unregister(link.sock)
        link.sock.close()

    def _reject(self, link: Link, why: str) -> bool:
        """A bad message closes its connection only; the child (if it was a
        slip, not an attack) reconnects."""
        self.counters.reject(why)
        self._close(link)
        return False

    def _receive(self, link: Link, now: float) -> bool:
        """One message: level-triggered epoll brings the connection back if
        more wait. False if the connection was closed."""
        buffer = self.buffer
        try:
            size = link.sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            size = 0  # ECONNRESET: gone, as at EOF
        if not size:
            self._close(link)
            closer = self.attempts.get(link.pid)
            if closer is not None and closer.final is None and not self.has_link(link.pid):
                # Most likely it is exiting (its status comes next); if it runs
                # on, it closed its own connection: said at its kill (hangs.py).
                closer.connection_closed_at = now
            self.child_closed()
            return False
        attempt = self.attempts.get(link.pid)
        if attempt is None:  # its attempt ended (reaped) before this was read
            return self._reject(link, "unknown_pid")
        if size > protocol.MAX_MESSAGE_BYTES:  # the buffer has one byte to spare
            return self._reject(link, "oversized")
        if link.plain_of is not attempt:
            link.plain_of, link.plain_prefix = attempt, protocol.plain_beat_prefix(attempt.job_id, attempt.number)
        plain = protocol.plain_beat(buffer, size, link.plain_prefix)
        if plain is not None:  # the common case: no parser, no dict, same values
            self.counters.beats += 1
            if plain[0] == attempt.last_seq + 1 and plain[1] <= attempt.progress:  # the next beat, no news
                attempt.last_beat, attempt.last_seq = now, plain[0]
            else:
                self._note(attempt, plain[0], plain[1], now)
            if self.debug:
                log.event(logging.DEBUG, "beat", pid=link.pid, job=attempt.key, attempt=attempt.number, seq=plain[0],
                          progress=plain[1])
            return True
        message = protocol.decode(bytes(buffer[:size]))
        if message is None:
            return self._reject(link, "malformed")
        if message.job != attempt.job_id or message.attempt != attempt.number:
            return self._reject(link, "wrong_attempt")
        self.counters.beats += 1
        self._note(attempt, message.seq, message.progress, now)
        reported = message.body.get(protocol.PROGRESS)
        if reported is not None and not self._take_progress(attempt, message.seq, reported):
            return self._reject(link, "malformed")
        if message.kind in protocol.FINAL_KINDS:
            if attempt.final is None:
                attempt.final = message.body
            self.to_ack.append(HeldFinal(link, attempt, message.seq))
        elif message.kind == protocol.CHECKPOINT:
            if protocol.SAVED not in message.body or self.hold_checkpoints is None:
                return self._reject(link, "malformed")
            saved = json.dumps(message.body[protocol.SAVED], separators=(",", ":"))
            self.to_ack.append(HeldFinal(link, attempt, message.seq, saved))
        elif self.debug:
            log.event(logging.DEBUG, "beat", pid=link.pid, job=attempt.key, attempt=attempt.number, seq=message.seq,
                      progress=message.progress)
        return True

    def _take_progress(self, attempt: Attempt, seq: int, reported: object) -> bool:
        """A phoenix.progress() value: the latest (by sequence number) is the
        attempt's. False: not one a child sends."""
        if not isinstance(reported, list) or len(reported) != 3:
            return False
        try:
            value = progress_value(*reported)
        except (TypeError, ValueError):
            return False
        if seq > attempt.reported_seq:  # the job's thread and the beat thread may send out of order
            attempt.reported, attempt.reported_seq = value, seq
            self.reported[attempt.attempt_id] = attempt
        return True

    def _note(self, attempt: Attempt, seq: int, progress: int, now: float) -> None:
        """A beat (or any message) numbered `seq` reporting `progress`."""
        attempt.last_beat = now
        if seq > attempt.last_seq:
            if attempt.last_seq >= 0 and seq > attempt.last_seq + 1:
                self.note_gap(attempt, attempt.last_seq + 1, seq)
            attempt.last_seq = seq
        elif seq in attempt.missing:  # late, not lost
            attempt.missing.discard(seq)
            self.counters.beats_missing -= 1
        if progress > attempt.progress:
            attempt.progress = progress
            attempt.last_progress = now
            attempt.master_answered(now)  # it moved on (its checkpoint went to the outbox, say)

    def _acknowledge(self) -> None:
        """Once the finals (and checkpoints) are in the journal: tell each
        child, which then exits (or goes on) without writing its outbox file."""
        held, self.to_ack = self.to_ack, []
        saves = [h for h in held if h.checkpoint is not None]
        if saves:
            held = [h for h in held if h.checkpoint is None]
            assert self.hold_checkpoints is not None
            if self.hold_checkpoints([(h.attempt.job_id, h.attempt.number, h.seq, h.checkpoint or "")
                                      for h in saves]):
                now = self.clock.monotonic()
                for h in saves:
                    h.attempt.master_answered(now)  # (if it waited on us: its stall clock starts again now)
                    self._send_ack(h)
            else:  # as a final's below
                now = self.clock.monotonic()
                for h in saves:
                    h.attempt.wait_on_master(now)
                self.unheld.update((h.attempt.attempt_id, h) for h in saves)
            if not held:
                return
        if not self.hold_finals([h.attempt for h in held if not h.attempt.final_held]):
            # Not durable: no ack. The child offers it again (or writes its outbox),
            # and retry_unheld acks it as soon as the journal is back.
            self.unheld.update((h.attempt.attempt_id, h) for h in held)
            return
        for h in held:
            h.attempt.final_held = True
            if h.link.sock.fileno() in self.links:
                try:
                    h.link.sock.send(protocol.ack(h.seq))
                except OSError:
                    continue  # the child is gone or stuck: its outbox (or the journal) has the outcome
                # A child sends nothing after its final: once it has the ack
                # (queued before our EOF), its connection is done. Closed now,
                # its EOF never wakes the loop (one turn fewer per job).
                self._close(h.link)

    def _send_ack(self, h: HeldFinal) -> None:
        """A checkpoint is held: its child goes on, on the same connection."""
        if h.link.sock.fileno() in self.links:
            try:
                h.link.sock.send(protocol.ack(h.seq))
            except OSError:
                pass  # the child is gone or stuck: it offers the checkpoint again, or writes its outbox

    def retry_unheld(self) -> None:
        """The journal is writable again: hold and acknowledge the finals it
        refused, on the connections their children still wait on (rather
        than when each offers it again, up to outcome_delivery_timeout later)."""
        waiting = [h for h in self.unheld.values() if h.link.sock.fileno() in self.links]
        now = self.clock.monotonic()
        for h in self.unheld.values():
            if h not in waiting:  # no longer waits on this connection
                h.attempt.master_answered(now)
        self.unheld.clear()
        if waiting:
            self.to_ack = waiting + self.to_ack
            self._acknowledge()

    def note_gap(self, attempt: Attempt, first: int, end: int) -> None:
        """Sequence numbers first..end-1 were skipped: beats the child numbered
        that have not arrived. Counted now; uncounted if one turns up late."""
        self.counters.beats_missing += end - first
        if end - first <= MAX_TRACKED_GAP and len(attempt.missing) <= MAX_TRACKED_GAP:
            attempt.missing.update(range(first, end))

