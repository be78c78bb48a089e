"""Keeping the master up when its state directory fails under it.

A journal that cannot be written (read-only file system, full disk, a file
made read-only) puts the master in an outage: it logs one clear error, starts
nothing new, keeps watching the children it has (they are not killed for our
fault), and keeps the journal writes that failed, in order, to replay once a
retry succeeds. Nothing crashes, so a service manager sees no crash loop.

A state directory removed from under a running master is noticed by the
journal file's identity (device, inode) changing; the master then rebuilds
the directory from what it holds open: the journal (SQLite's backup API
copies the still-open, unlinked database back to its path), the sockets, the
lock and the pidfile. A different file found at the journal's path is never
taken up in place of the open journal. Children connected to the old heartbeat socket keep
beating to it; new ones find the new one by path.
"""

from __future__ import annotations

import collections
import logging
import os
import sqlite3
from typing import Callable

from phoenix import log
from phoenix.linux.clock import SYSTEM, Clock

STORAGE_ERRORS = (sqlite3.Error, OSError)
RETRY_EVERY = 1.0  # seconds between attempts to write the journal again


class JournalOutage:
    def __init__(self, journal_path: str, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self.journal_path = journal_path
        self.error: str | None = None
        self.unwritten: collections.deque[tuple[str, Callable[[], None]]] = collections.deque()
        self.next_retry = float("inf")
        self.damaged = False  # the last failure says the journal is damaged: no wait mends it (is_damage)
        # journal_unwritable was logged and journal_recovered not yet: a write that fails
        # again while what waited is retried (settled) continues the outage it announced.
        self.announced = False

    @property
    def active(self) -> bool:
        return self.error is not None

    def failed(self, exc: BaseException, doing: str, retry: Callable[[], None] | None = None) -> None:
        """Note a failed journal operation; `retry` redoes it later, in order."""
        if not self.announced:
            log.event(logging.ERROR, "journal_unwritable", path=self.journal_path, doing=doing, error=str(exc),
                      effect="no new jobs start; running children are watched and kept; retrying every 1 s")
            self.announced = True
        self.error = str(exc)
        if isinstance(exc, STORAGE_ERRORS):  # (not the stand-in a write queued behind the outage gets)
            self.damaged = is_damage(exc)
        if retry is not None:
            self.unwritten.append((doing, retry))
        self.next_retry = self.clock.monotonic() + RETRY_EVERY

    def retry_if_due(self, probe: Callable[[], None]) -> bool:
        """Replay what failed; True once the journal is writable and all is
        written. Then the caller retries what waited on the journal, and says
        `settled()`: a disk with room for the probe and the replay but not
        for a large held write (a checkpoint) fails again meanwhile, and the
        outage goes on without a journal_recovered and a journal_unwritable
        logged every second."""
        if self.error is None or self.clock.monotonic() < self.next_retry:
            return False
        try:
            probe()
            while self.unwritten:
                _doing, redo = self.unwritten[0]
                redo()
                self.unwritten.popleft()
        except STORAGE_ERRORS as exc:
            self.error = str(exc)
            self.damaged = is_damage(exc)
            self.next_retry = self.clock.monotonic() + RETRY_EVERY
            return False
        self.error = None
        self.damaged = False
        self.next_retry = float("inf")
        return True

    def settled(self) -> None:
        """What waited on the journal was retried after retry_if_due: the
        recovery is logged if it held."""
        if self.error is None and self.announced:
            log.event(logging.WARNING, "journal_recovered", path=self.journal_path)
            self.announced = False


def is_damage(exc: BaseException) -> bool:
    """SQLite finds the journal damaged (truncated, overwritten): unlike a
    full disk or an I/O error, waiting does not mend it."""
    return getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
