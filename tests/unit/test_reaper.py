"""The reaper in-process: each attempt's end is noticed once, from the way
its process ends (our child by wait4, the fork server's report, an adopted
child's pidfd), and handed to the recorder; the attempts the journal says
run are adopted, or concluded when their process is gone. The processes are
real; the fork server's reports come from phoenix.testing.FakeSpawner."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from phoenix.app import App
from phoenix.config import Config
from phoenix.linux import procfs
from phoenix.linux.clock import SYSTEM, Clock, since_boot
from phoenix.master.attempts import Attempt, AttemptTable
from phoenix.master.loop import Loop
from phoenix.master.reaper import Reaper
from phoenix.master.recorder import LOST_UNWATCHED
from phoenix.master.specs import JobSpecs
from phoenix.store.base import OpenAttempt
from phoenix.store.sqlite import Journal
from phoenix.testing import FakeClock, FakeSpawner

NOOP = "tests.apps.jobs:noop"


class Recorder:
    def __init__(self) -> None:
        self.unread: list[Callable[[], None]] = []
        self.ended: list[tuple[int, int | None, int | None]] = []  # (pid, status, max RSS)
        self.lost: list[tuple[int | None, str]] = []

    def conclude(self, attempt: Attempt, status: int | None, max_rss_kb: int | None) -> None:
        self.ended.append((attempt.pid, status, max_rss_kb))

    def conclude_without_process(self, a: OpenAttempt, reason: str) -> None:
        self.lost.append((a.pid, reason))

    def held_final(self, a: OpenAttempt) -> dict[str, Any] | None:
        return None

    def record_unread(self) -> None:
        pass


class Hangs:
    def __init__(self) -> None:
        self.watched: list[tuple[int, float]] = []
        self.cancelled: list[int] = []

    def watch_adopted(self, attempt: Attempt, now: float) -> None:
        self.watched.append((attempt.pid, now))

    def cancel(self, attempt: Attempt, now: float) -> None:
        self.cancelled.append(attempt.pid)

    def ended(self, attempt: Attempt, status: int | None) -> None:
        pass  # no memory cgroups here (tests/test_cgroups.py)


class Reaping:
    def __init__(self, journal: Journal, clock: Clock) -> None:
        self.journal = journal
        self.loop = Loop(clock)
        self.loop.open()
        self.attempts = AttemptTable()
        self.recorder = Recorder()
        self.server = FakeSpawner()
        self.hangs = Hangs()
        self.config = Config()
        self.reaper = Reaper(lambda: self.journal, self.attempts, self.loop, JobSpecs(App("t"), lambda: self.config),
                             self.recorder, self.server, self.hangs, lambda: None, lambda: None)
        self.reaper.child_exited = False

    def running(self, pid: int, key: str = "k") -> Attempt:
        """An attempt recorded as running in the process `pid`."""
        self.journal.submit(NOOP, "{}", key)
        job = next(job for job in self.journal.pending(10) if job.key == key)
        attempt_id = self.journal.begin_attempt(job, 1, pid, procfs.start_time(pid))
        now = self.loop.clock.monotonic()
        return Attempt(attempt_id, job.id, key, NOOP, 1, pid, None, now, now, now)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "journal.db")
    yield journal
    journal.close()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def start(children: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    children.append(process)
    return process


def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.005)


def test_our_child_s_exit_is_concluded_once_with_its_wait_status(
        journal: Journal, children: list[subprocess.Popen[bytes]]) -> None:
    parts = Reaping(journal, FakeClock())
    child = start(children)
    attempt = parts.running(child.pid)
    parts.attempts.add(attempt)
    os.kill(child.pid, signal.SIGKILL)
    wait_until(lambda: procfs.state(child.pid) == "Z")
    parts.reaper.reap()  # no SIGCHLD noted: not looked for
    assert parts.recorder.ended == [] and child.pid in parts.attempts
    parts.reaper.child_exited = True
    parts.reaper.reap()
    [(pid, status, _rss)] = parts.recorder.ended
    assert (pid, status) == (child.pid, signal.SIGKILL) and not parts.attempts
    parts.reaper.child_exited = True
    parts.reaper.reap()
    assert len(parts.recorder.ended) == 1


def test_the_fork_server_s_reports_go_to_the_attempt_or_the_subprocess_that_exited(journal: Journal) -> None:
    parts = Reaping(journal, FakeClock())
    attempt = Attempt(1, 1, "k", NOOP, 1, 4_100_000, None, 0.0, 0.0, 0.0)
    parts.attempts.add(attempt)
    spare_exits: list[int] = []
    parts.loop.subprocesses[4_100_001] = spare_exits.append
    parts.server.report_exit(4_100_000, 3 << 8, 512)
    parts.server.report_exit(4_100_001, 0)
    parts.server.report_exit(4_100_002, 0)  # an orphan we subreaped: nobody's
    parts.reaper.reap()
    assert parts.recorder.ended == [(4_100_000, 3 << 8, 512)]
    assert spare_exits == [0] and 4_100_001 not in parts.loop.subprocesses


def test_adoption_takes_the_live_and_concludes_the_gone(
        journal: Journal, children: list[subprocess.Popen[bytes]]) -> None:
    # Its since-boot clock reads the real one: the journal stores real boot times.
    clock = FakeClock(start=1000.0, boot_offset=since_boot() - 1000.0)
    parts = Reaping(journal, clock)
    live = start(children)
    parts.running(live.pid, "live")
    gone = start(children)
    parts.running(gone.pid, "gone")
    gone.kill()
    gone.wait()  # its pid may be reused: its recorded start time tells
    journal.submit(NOOP, "{}", "never")
    never = next(job for job in journal.pending(10) if job.key == "never")
    journal.begin_attempt(never, 1, None, None)  # a fork that failed, its master dead before recording so
    clock.advance(30.0)
    parts.reaper.adopt_running_attempts()
    assert list(parts.attempts) == [live.pid]
    adopted = parts.attempts[live.pid]
    assert adopted.own_child and adopted.last_seq == -1 and adopted.pidfd is None
    assert clock.monotonic() - adopted.started == pytest.approx(30.0, abs=2.0)  # max_runtime counts from its start
    assert parts.hangs.watched == [(live.pid, clock.monotonic())]
    assert sorted(parts.recorder.lost, key=str) == sorted(
        [(gone.pid, LOST_UNWATCHED), (None, "the master stopped before the attempt started")], key=str)


def test_an_adopted_child_that_is_not_ours_is_concluded_when_its_pidfd_fires(journal: Journal) -> None:
    parts = Reaping(journal, SYSTEM)
    # A process of another parent: started by a shell that exits at once.
    shell = subprocess.run(["sh", "-c", "setsid sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, check=True)
    orphan = int(shell.stdout)
    pidfd = os.pidfd_open(orphan)
    try:
        parts.running(orphan)
        parts.reaper.adopt_running_attempts()
        adopted = parts.attempts[orphan]
        assert not adopted.own_child and adopted.pidfd is not None
        _began, _woke, ready = parts.loop.wait(SYSTEM.monotonic() + 0.05)
        assert ready == []  # alive: nothing to do
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        _began, _woke, ready = parts.loop.wait(SYSTEM.monotonic() + 5.0)
        for on_ready in ready:
            on_ready()
        assert parts.recorder.ended == [(orphan, None, None)] and not parts.attempts
    finally:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(pidfd)


def titled(children: list[subprocess.Popen[bytes]], title: str, own_group: bool = True) -> subprocess.Popen[bytes]:
    """A process whose title (argv[0], as setproctitle leaves it) is `title`."""
    process = subprocess.Popen([title, "60"], executable="/usr/bin/sleep", start_new_session=own_group)
    children.append(process)
    wait_until(lambda: procfs.titled_group_leaders(title) != [] or not own_group)  # exec'd
    return process


@pytest.mark.parametrize("processes, recorded_start", [(1, "its own"), (0, "its own"), (1, "another's"), (2, None)])
def test_an_attempt_whose_pid_another_tool_damaged_is_found_by_title_or_never_run_again(
        journal: Journal, children: list[subprocess.Popen[bytes]], processes: int, recorded_start: str | None) -> None:
    """A BLOB in an open attempt's pid was taken for a dead process: the job
    ran twice at once. Its process is the one that leads its own group with
    the attempt's title and its recorded start time; none titled: lost; one
    that does not match, or two: neither adopted nor lost."""
    parts = Reaping(journal, SYSTEM)
    title = "phoenix: job damaged attempt 1"
    titled(children, title, own_group=False)  # a process the job forked: not its leader
    running = [titled(children, title) for _ in range(processes)]
    holder = start(children)
    parts.running(holder.pid, "damaged")
    journal.db.execute("UPDATE attempts SET pid = x'ff' WHERE outcome IS NULL")
    if recorded_start is None:  # a journal written before start times were recorded
        journal.db.execute("UPDATE attempts SET start_time = NULL WHERE outcome IS NULL")
    elif running:
        recorded = procfs.start_time(running[0].pid) or 0
        journal.db.execute("UPDATE attempts SET start_time = ? WHERE outcome IS NULL",
                           (recorded if recorded_start == "its own" else recorded + 1,))
    parts.reaper.adopt_running_attempts()
    if processes == 1 and recorded_start == "its own":
        assert list(parts.attempts) == [running[0].pid] and parts.recorder.lost == []
    elif processes == 0:
        assert not parts.attempts and parts.recorder.lost == [(b"\xff", LOST_UNWATCHED)]
    else:
        assert not parts.attempts and parts.recorder.lost == []
