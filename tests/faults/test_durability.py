"""Acknowledged means on disk: whatever Phoenix acknowledges (a submit's exit
0, a child's go-ahead, a final's ack to its child, a callback recorded as
done, an outcome left in the outbox) survives a power cut. The cut is real:
the state directory is an ext4 file system on a loop device, mounted
errors=remount-ro, shut down through /sys/fs/ext4/DEV/trigger_fs_error (its
journal aborts: nothing not yet on the device gets there), then the master
is SIGKILLed and the file system mounted again from what its device holds.
Also here: PostgreSQL's side of the promise (synchronous_commit)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import wait_for
from tests.driver import phoenix_cli


class Ext4:
    """A small ext4 file system on a loop device, ours alone."""

    def __init__(self, image: Path, mountpoint: Path) -> None:
        self.image, self.mountpoint = image, mountpoint
        self.loop: str | None = None

    def mount(self) -> None:
        # A new loop device each time: `mount -o loop` reuses one already on the
        # image, and after a cut that is the dead file system's, which a copy of
        # this mount in another test's mount namespace (unshare --mount-proc, run
        # at the same moment under xdist) keeps alive, read-only: the remount
        # then gave the cut file system back instead of the image's contents.
        self.loop = subprocess.run(["losetup", "--find", "--show", str(self.image)], check=True,
                                   capture_output=True, text=True).stdout.strip()
        # commit=300: ext4's own journal commit (every 5 s by default) would put
        # unsynced writes on the device before the cut, and hide their absence.
        subprocess.run(["mount", "-o", "errors=remount-ro,commit=300", self.loop, str(self.mountpoint)],
                       check=True, capture_output=True, text=True)

    def detach(self) -> None:
        """Let the loop device go (at once, or when the last mount of it anywhere goes)."""
        if self.loop is not None:
            subprocess.run(["losetup", "--detach", self.loop], capture_output=True)
            self.loop = None

    @property
    def device(self) -> str:
        source = subprocess.run(["findmnt", "-no", "SOURCE", str(self.mountpoint)], check=True,
                                capture_output=True, text=True).stdout.strip()
        return os.path.basename(source)

    def power_cut(self) -> None:
        """Shut the file system down as a power cut would: what is not on the
        device yet never gets there (the processes are killed next)."""
        Path(f"/sys/fs/ext4/{self.device}/trigger_fs_error").write_text("1")
        wait_for(self.refuses_writes, 10, "the file system to go read-only")

    def refuses_writes(self) -> bool:
        try:
            os.mkdir(self.mountpoint / "probe")
        except OSError as exc:
            if exc.errno == errno.EROFS:  # (newer kernels mark it emergency_ro, not ro: ask it)
                return True
            raise
        os.rmdir(self.mountpoint / "probe")
        return False

    def remount(self) -> None:
        """Mount again from what the device holds (the processes using it are gone)."""
        wait_for(lambda: subprocess.run(["umount", str(self.mountpoint)], capture_output=True).returncode == 0,
                 15, f"{self.mountpoint} to be unused, to unmount it")
        self.detach()
        self.mount()


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Ext4]:
    if os.geteuid() != 0:
        pytest.skip("a power cut on a loop device needs root (mount, losetup)")
    if shutil.which("mkfs.ext4") is None or shutil.which("findmnt") is None:
        pytest.skip("needs mkfs.ext4 and findmnt (e2fsprogs, util-linux)")
    image, mountpoint = tmp_path / "ext4.img", tmp_path / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    fs = Ext4(image, mountpoint)
    try:
        fs.mount()
    except subprocess.CalledProcessError as exc:
        fs.detach()
        pytest.skip(f"cannot mount a loop device here: {exc.stderr.strip()}")
    if not Path(f"/sys/fs/ext4/{fs.device}/trigger_fs_error").exists():
        subprocess.run(["umount", str(mountpoint)], check=False)
        fs.detach()
        pytest.skip("this kernel has no /sys/fs/ext4/DEV/trigger_fs_error to shut a file system down")
    yield fs
    if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
    fs.detach()


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: it holds nothing open)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def kill_master(master) -> None:
    """SIGKILL the master as the power cut would, and wait for its fork server
    (which exits when its master does) to be gone too."""
    server = master.live()["master"]["fork_server_pid"]
    master.signal(signal.SIGKILL)
    master.wait_exit()
    if server:
        wait_for(lambda: gone(server), 15, "the fork server to exit with its master")


def submitted_and_synced(master) -> None:
    """Put what was submitted on disk whatever the code does (os.sync), then
    give the master (started with no slots) one slot to run it: a test of what
    comes after the submit."""
    os.sync()
    master.signal(signal.SIGTTIN)


def rows(journal: Path, query: str) -> list[tuple]:
    db = sqlite3.connect(journal)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def test_submitted_jobs_survive_a_power_cut(master_factory, ext4):
    """`phoenix submit` exit 0 while a master holds the journal open: the job
    is on disk. (Before: WAL at synchronous=NORMAL, and all 10 were gone.)"""
    state = ext4.mountpoint / "state"
    master = master_factory("--workers", "0", state=state)
    for i in range(10):
        done = phoenix_cli("submit", "tests.apps.jobs:noop", json.dumps({"i": i}), "--key", f"job-{i}",
                           state_dir=state)
        assert done.returncode == 0, done.stderr
    ext4.power_cut()
    kill_master(master)
    ext4.remount()
    assert rows(state / "journal.db", "SELECT key FROM jobs ORDER BY id") == [(f"job-{i}",) for i in range(10)]


def test_an_acknowledged_final_survives_a_power_cut(master_factory, ext4):
    """A child that got its final's ack exits without an outbox file: the
    final must be on disk by then, or a power cut runs the finished job again."""
    state = ext4.mountpoint / "state"
    master = master_factory("--workers", "0", state=state, env={"PHOENIX_CALLBACK_TIMEOUT": "60"})
    master.submit("tests.apps.jobs:sleep", {"s": 0, "callback_sleep": 60}, key="finished")
    submitted_and_synced(master)  # this test is about the ack
    # The callback runs once the outcome is recorded (after the ack), and sleeps: the cut comes before it ends.
    wait_for(lambda: len(master.callbacks()) == 1, 15, "the job to finish and its callback to start")
    first_run = master.callbacks()[0]["payload"]["pid"]
    ext4.power_cut()
    kill_master(master)
    ext4.remount()
    again = master_factory("--exit-when-done", state=state)
    assert again.wait_exit() == 0, again.log()[-2000:]
    [(job_state, result)] = rows(state / "journal.db", "SELECT state, result FROM jobs WHERE key = 'finished'")
    assert job_state == "finished"
    assert json.loads(result)["pid"] == first_run, "the job whose final was acknowledged ran again"


def test_a_callback_recorded_as_done_survives_a_power_cut(master_factory, ext4):
    """A callback recorded as done is not owed any more: that must be on disk,
    or after a power cut it runs again."""
    state = ext4.mountpoint / "state"
    master = master_factory("--workers", "0", state=state)
    master.submit("tests.apps.jobs:noop", {"n": 1}, key="finished")
    submitted_and_synced(master)  # this test is about the callback
    wait_for(lambda: rows(state / "journal.db", "SELECT state FROM callbacks") == [("done",)], 15,
             "the job's callback to be recorded as done")
    assert len(master.callbacks()) == 1
    ext4.power_cut()
    kill_master(master)
    ext4.remount()
    again = master_factory("--exit-when-done", state=state)
    assert again.wait_exit() == 0, again.log()[-2000:]
    assert rows(state / "journal.db", "SELECT state, attempts FROM jobs") == [("finished", 1)]
    assert len(again.callbacks()) == 1, "the callback recorded as done ran again"


def test_an_outcome_in_the_outbox_survives_a_power_cut(master_factory, ext4):
    """No master to acknowledge it: the child writes its outcome to the outbox
    and exits. That file (its data and its name) must be on disk by then."""
    state = ext4.mountpoint / "state"
    master = master_factory("--workers", "0", state=state, env={"PHOENIX_OUTCOME_DELIVERY_TIMEOUT": "0.3"})
    release = ext4.mountpoint / "release"  # (it must end once its master is gone, however loaded the machine)
    master.submit("tests.apps.jobs:sleep", {"s": 60, "until": str(release)}, key="orphaned")
    submitted_and_synced(master)  # this test is about the outbox
    child = wait_for(lambda: (j := master.jobs().get("orphaned")) and j["pid"], 15, "the job to run")
    kill_master(master)
    release.touch()
    wait_for(lambda: gone(child), 15, "the child to finish and write its outbox file")
    assert [p.name for p in (state / "outbox").iterdir()] != [], "the child wrote no outbox file"
    ext4.power_cut()
    ext4.remount()
    again = master_factory("--exit-when-done", state=state)
    assert again.wait_exit() == 0, again.log()[-2000:]
    [(job_state, result)] = rows(state / "journal.db", "SELECT state, result FROM jobs WHERE key = 'orphaned'")
    assert job_state == "finished"
    assert json.loads(result)["pid"] == child, "the outcome the child left in the outbox was lost: the job ran again"


def test_a_postgresql_session_that_acknowledges_before_disk_is_refused(pg_url):
    """synchronous_commit = off acknowledges a commit before it is on the
    server's disk: Phoenix refuses such a session with one line (exit 2), on
    a reconnect too (an outage, not a crash), and takes on, local and the
    remote_* levels."""
    import psycopg

    from phoenix.store.base import StoreUnavailable, WeakDurability
    from phoenix.store.postgres import PgStore

    database = urlsplit(pg_url).path.lstrip("/")
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {database} SET synchronous_commit = off")
    done = phoenix_cli("submit", "tests.apps.jobs:noop", "{}", "--store", pg_url)
    assert done.returncode == 2, done.stderr
    assert "synchronous_commit = off" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    with pytest.raises(WeakDurability):
        PgStore(pg_url)
    # Commands that only look acknowledge nothing: the operator still sees (was: every one refused, exit 2).
    looked = phoenix_cli("status", "--store", pg_url)
    assert looked.returncode == 3 and "synchronous_commit" not in looked.stderr, looked.stderr  # 3: no master
    assert phoenix_cli("jobs", "--store", pg_url).returncode == 0

    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {database} SET synchronous_commit = local")
    store = PgStore(pg_url)  # accepted: on the server's disk before the commit returns
    try:
        store.submit("tests.apps.jobs:noop", "{}", "before")
        # Pinned in the session: a server-wide change and a reload (ALTER SYSTEM) cannot turn it off
        # under a running master (before, the master acknowledged on at `off`, and said nothing).
        with store._tx() as cur:
            cur.execute("SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'")
            assert cur.fetchone() == ("local", "session")
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {database} SET synchronous_commit = off")
        store._drop()  # as a lost connection would: the next call connects again
        with pytest.raises(StoreUnavailable, match="synchronous_commit = off"):
            store.submit("tests.apps.jobs:noop", "{}", "after")
    finally:
        store.close()


def test_a_file_system_failing_under_running_jobs_loses_no_outcome_and_runs_none_twice(master_factory, ext4,
                                                                                       tmp_path):
    """The state directory's file system shuts down while 4 jobs run, and the
    children live on. Their outcomes reach neither the journal nor the
    outbox: `phoenix stop` says the master cannot record them; the master is
    SIGKILLed and the file system mounted again. The next master knows every
    attempt (on disk before its child got the go-ahead), adopts the
    children and takes each outcome from them: no job runs twice."""
    state, notes, go = ext4.mountpoint / "state", tmp_path / "notes", tmp_path / "go"
    app = "tests.apps.gated:app"
    master = master_factory(state=state, app=app, env={"PHOENIX_OUTCOME_DELIVERY_TIMEOUT": "0.5"})
    for i in range(4):
        master.submit("tests.apps.gated:gated", {"i": i, "notes": str(notes), "go": str(go)}, key=f"job-{i}")
    wait_for(lambda: notes.exists() and notes.read_text().count("start 1") == 4, 20, "the 4 jobs to start")
    ext4.power_cut()
    go.touch()
    wait_for(lambda: notes.read_text().count("end 1") == 4, 15, "the 4 bodies to end")
    wait_for(lambda: master.live()["master"].get("unrecorded_outcomes", 4) == 4, 15, "the master to have them")
    stopped = phoenix_cli("stop", "--timeout", "2", state_dir=state)
    assert stopped.returncode == 1 and "cannot record 4" in stopped.stderr, stopped.stdout + stopped.stderr
    kill_master(master)
    ext4.remount()
    again = master_factory("--exit-when-done", state=state, app=app)
    assert again.wait_exit() == 0, again.log()[-3000:]
    assert rows(state / "journal.db", "SELECT key, state, attempts FROM jobs ORDER BY key") == [
        (f"job-{i}", "finished", 1) for i in range(4)]
    assert notes.read_text().count("start") == 4, "a job ran twice"
