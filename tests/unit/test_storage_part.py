"""The storage part in-process, on a fake clock and a real SQLite journal.

A journal write that fails (a full disk) begins an outage instead of taking
the master down; the write is kept, and so is every write queued behind it.
The journal is tried again every RETRY_EVERY fake seconds, not before; once
it takes writes again the kept ones land in order and what waited for the
journal (finals not held, jobs, claims, owed callbacks) goes on."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from phoenix.linux.paths import StatePaths
from phoenix.linux.pidfile import PidFile
from phoenix.master.attempts import AttemptTable
from phoenix.master.storage import STATE_DIR_CHECK, Storage
from phoenix.store.outage import RETRY_EVERY, JournalOutage
from phoenix.store.sqlite import Journal
from phoenix.testing import FakeClock
from phoenix.wire.control import ControlServer

DISK_FULL = sqlite3.OperationalError("database or disk is full")


class Disk(Journal):
    """A real journal on a disk a test fills and frees (the real disk: tests/faults/test_full_disk.py)."""

    full = False

    def probe_write(self) -> None:
        if self.full:
            raise DISK_FULL
        super().probe_write()


class Parts:
    """The parts the storage part lets go on once the journal recovers; they note what they were asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def check(self) -> None:
        self.asked.append("check")

    def rebind_heartbeat(self) -> None:
        raise AssertionError("the state directory is never lost in these tests")

    def wake(self) -> None:
        self.asked.append("wake")

    def reconcile_claims(self) -> None:
        self.asked.append("reconcile_claims")

    def run_owed(self) -> None:
        self.asked.append("run_owed")

    def retry_unheld(self) -> None:
        self.asked.append("retry_unheld")


class Storing:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.paths = StatePaths(str(tmp_path / "state"))
        self.paths.ensure()
        self.disk = Disk(self.paths.journal)
        self.outage = JournalOutage(str(self.paths.journal), self.clock)
        self.parts = Parts()
        self.written: list[str] = []

        def no_control() -> ControlServer:
            raise AssertionError("the state directory is never lost in these tests")

        self.storage = Storage(self.disk, self.paths, self.outage, self.clock, AttemptTable(), None,
                               PidFile(self.paths.pidfile, self.paths.lockfile), self.parts.retry_unheld,
                               lambda: self.parts, no_control, lambda: self.parts, lambda: self.parts,
                               lambda: None)

    def write(self, what: str) -> None:
        """A journal write: it fails while the disk is full."""

        def record_outcome() -> None:
            if self.disk.full:
                raise DISK_FULL
            self.disk.set_meta(last=what)
            self.written.append(what)

        self.storage.guarded(record_outcome, retry=True)

    def close(self) -> None:
        self.disk.close()


@pytest.fixture
def storing(tmp_path: Path) -> Iterator[Storing]:
    storing = Storing(tmp_path)
    yield storing
    storing.close()


def test_an_outage_begins_on_a_failed_write_retries_every_retry_every_and_ends_on_success(storing: Storing) -> None:
    storing.disk.full = True
    storing.write("first")
    assert storing.outage.active and storing.written == []
    storing.disk.full = False
    storing.write("second")  # queued behind the first, in order, though the disk has room again
    assert storing.written == [] and [doing for doing, _redo in storing.outage.unwritten] == ["record_outcome"] * 2
    storing.disk.full = True

    storing.clock.advance(RETRY_EVERY - 0.01)
    storing.storage.watch_storage()  # not due: no retry yet
    assert storing.outage.active and storing.outage.next_retry > storing.clock.monotonic()
    storing.clock.advance(0.01)
    storing.storage.watch_storage()  # due, and the disk is still full: the outage goes on, the next retry is set
    assert storing.outage.active and storing.written == []
    assert storing.outage.next_retry == storing.clock.monotonic() + RETRY_EVERY
    assert "wake" not in storing.parts.asked

    storing.disk.full = False
    storing.clock.advance(RETRY_EVERY / 2)
    storing.storage.watch_storage()  # room again, but the retry is not due
    assert storing.outage.active and storing.written == []
    storing.clock.advance(RETRY_EVERY / 2)
    storing.storage.watch_storage()
    assert not storing.outage.active and not storing.outage.unwritten
    assert storing.written == ["first", "second"] and storing.disk.meta("last") == "second"
    assert [a for a in storing.parts.asked if a != "check"] == ["retry_unheld", "wake", "reconcile_claims",
                                                                  "run_owed"]


def test_a_write_without_retry_is_not_kept_and_a_read_error_does_not_escape(storing: Storing) -> None:
    def read_pending() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    storing.storage.guarded(read_pending)
    assert storing.outage.active and not storing.outage.unwritten


def test_the_state_directory_is_checked_once_a_second(storing: Storing) -> None:
    storing.storage.watch_storage()
    storing.storage.watch_storage()
    assert storing.parts.asked == ["check"]
    storing.clock.advance(STATE_DIR_CHECK)
    storing.storage.watch_storage()
    assert storing.parts.asked == ["check", "check"]
    storing.storage.check_state_dir_now()  # before a heartbeat_timeout kill: at once
    assert storing.parts.asked == ["check", "check", "check"]


def test_a_disk_with_room_for_small_writes_only_is_one_outage_in_the_log(storing: Storing,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Found from outside: with room for the probe but not for a held
    checkpoint, the master logged journal_recovered, then journal_unwritable,
    every second. Retried and failing again, it is one outage: one line when
    it begins, one when what waited on the journal is written at last."""
    big_write_fits = False

    def hold_the_checkpoint() -> None:  # what retry_unheld writes: more than the probe
        if not big_write_fits:
            raise DISK_FULL

    storing.storage.retry_unheld = lambda: storing.storage.guarded(hold_the_checkpoint)
    caplog.set_level("INFO", logger="phoenix")
    storing.storage.guarded(hold_the_checkpoint)
    for _second in range(5):
        storing.clock.advance(RETRY_EVERY)
        storing.storage.watch_storage()  # the probe passes, the held write fails again
        assert storing.outage.active
    big_write_fits = True
    storing.clock.advance(RETRY_EVERY)
    storing.storage.watch_storage()
    assert not storing.outage.active
    said = [record.getMessage() for record in caplog.records
            if record.getMessage() in ("journal_unwritable", "journal_recovered")]
    assert said == ["journal_unwritable", "journal_recovered"]
