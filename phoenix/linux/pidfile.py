"""The pidfile, unicorn-style: `kill -USR2 $(cat .phoenix/phoenix.pid)`.

A separate lock file is held with flock() by the live master for its whole
life; its fd survives exec, so the lock is held across an in-place
replacement. The pidfile itself is written atomically (temp file + rename), so
a reader never sees it half-written. The lock, not the pid, decides whether a
master is alive: a pid in the file may belong to anybody by now."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from pathlib import Path

from phoenix.errors import Conflict, Unavailable
from phoenix.linux import procfs
from phoenix.linux.clock import SYSTEM
from phoenix.linux.paths import exclusive_temporary

log = logging.getLogger("phoenix")


class AlreadyRunning(Conflict, RuntimeError):
    """Another live master holds this state directory."""


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return int(text) if text else None
    except (FileNotFoundError, ValueError):
        return None


PIDFILE_MODE = 0o644  # whatever the umask: readable (a pid is no secret), written by the master alone


def write_atomically(path: Path, pid: int) -> None:
    """Through a temporary file of an unpredictable name made with O_EXCL:
    no link planted at a name Phoenix would use is followed."""
    fd, temporary = exclusive_temporary(path.parent, f".{path.name}.", ".tmp")
    try:
        os.fchmod(fd, PIDFILE_MODE)
        os.write(fd, f"{pid}\n".encode())
        os.close(fd)
        fd = -1
        os.rename(temporary, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.unlink(temporary)
        raise


def open_lock_file(path: Path) -> int:
    """The lock file, created 0600 if missing; never through a link planted at
    its name (O_NOFOLLOW), and refused if another user's."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        os.close(fd)
        raise PermissionError(errno.EPERM, f"the lock file belongs to uid {owner}, not to this user", str(path))
    os.fchmod(fd, 0o600)  # exactly, whatever the umask
    return fd


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


# A reader's probe (live_master_pid, lock_held: `phoenix status`, the
# dashboard's masters page every 2 s) holds LOCK_SH for a moment; a master
# holds LOCK_EX for its whole life. Taking the lock is tried this long before
# concluding a master runs: a probe has let go by then, a master never does.
PROBE_WAIT = 1.5
PROBE_RETRY = 0.01


def lock_exclusive(fd: int, wait: float) -> bool:
    """Take LOCK_EX on `fd`, trying again for up to `wait` seconds while
    another holds the lock; False if it is still held then."""
    deadline = SYSTEM.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if SYSTEM.monotonic() >= deadline:
                return False
            time.sleep(PROBE_RETRY)


class PidFile:
    def __init__(self, pidfile: Path, lockfile: Path, inherited_lock_fd: int | None = None) -> None:
        self.pidfile = pidfile
        self.lockfile = lockfile
        self.lock_fd = inherited_lock_fd

    def acquire(self) -> None:
        """Take the lock (or keep the one inherited across exec) and write our pid."""
        if self.lock_fd is None:
            fd = open_lock_file(self.lockfile)
            if not lock_exclusive(fd, PROBE_WAIT):
                os.close(fd)
                holder = self._live_holder()
                which = f"pid {holder}" if holder is not None else "its pidfile names no live process yet"
                raise AlreadyRunning(
                    f"a Phoenix master is already running on {self.pidfile.parent} ({which}); "
                    f"stop it with `phoenix stop --state-dir {self.pidfile.parent}` or use another --state-dir"
                )
            self.lock_fd = fd
            self._warn_if_stale()
        write_atomically(self.pidfile, os.getpid())

    def _live_holder(self) -> int | None:
        """The pid in the pidfile once it names a live process: a master that
        has just won the lock (two starts racing) rewrites a missing or dead
        master's pidfile a moment after taking the lock."""
        deadline = SYSTEM.monotonic() + 2.0
        while True:
            pid = read_pid(self.pidfile)
            if (pid is not None and procfs.state(pid) is not None) or SYSTEM.monotonic() >= deadline:
                return pid
            time.sleep(0.01)

    def _warn_if_stale(self) -> None:
        old = read_pid(self.pidfile)
        if old is None or old == os.getpid():
            return
        if procfs.state(old) is None:
            log.warning("stale_pidfile path=%s pid=%d reason=no such process; replacing it", self.pidfile, old)
        else:
            log.warning(
                "stale_pidfile path=%s pid=%d reason=that pid is now another process (%s) and no master holds "
                "the lock; replacing it", self.pidfile, old, _describe(old),
            )

    def rebuild(self) -> None:
        """After the state directory was removed under us: a new lock file,
        locked, and the pidfile again, so no second master can start there."""
        fd = open_lock_file(self.lockfile)
        if not lock_exclusive(fd, PROBE_WAIT):
            os.close(fd)
            raise AlreadyRunning(f"another master took {self.lockfile} while the state directory was gone")
        if self.lock_fd is not None:
            os.close(self.lock_fd)
        self.lock_fd = fd
        write_atomically(self.pidfile, os.getpid())

    def release(self) -> None:
        """Remove the pidfile if it is still ours, then drop the lock."""
        if read_pid(self.pidfile) == os.getpid():
            try:
                self.pidfile.unlink()
            except FileNotFoundError:
                pass
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def live_master_pid(pidfile: Path, lockfile: Path) -> int | None:
    """The pid of the master holding the lock, or None when no master runs."""
    try:
        fd = os.open(lockfile, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid(pidfile)
    else:
        return None
    finally:
        os.close(fd)


def running_master_pid(pidfile: Path, lockfile: Path, wait: float) -> int | None:
    """The pid of the master holding the lock, as live_master_pid; while one
    holds the lock with no pidfile, waited for up to `wait` seconds: a
    fork-mode hand-over renames the pidfile to phoenix.pid.oldbin until the
    new master is ready, and one removed under a master is written again
    within a second. None only when no master holds the lock; a lock held
    that long with no pidfile raises NoPidfile."""
    deadline = SYSTEM.monotonic() + wait
    while True:
        pid = live_master_pid(pidfile, lockfile)
        if pid is not None or not lock_held(lockfile):
            return pid
        if SYSTEM.monotonic() >= deadline:
            raise NoPidfile(f"a master holds {lockfile} but {pidfile} names none after {wait:g} s (a hand-over "
                            "that does not end?); see the master's log")
        time.sleep(0.05)


class NoPidfile(Unavailable, RuntimeError):
    """A master holds the lock, and its pidfile has not come back."""


def lock_held(lockfile: Path) -> bool:
    """Whether a master holds the lock, whatever its pidfile says (removed
    under it, it is written again within a second)."""
    try:
        fd = os.open(lockfile, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        return False
    finally:
        os.close(fd)
