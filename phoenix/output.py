"""A job's own output: what its process and everything it starts write to
stdout and stderr goes to one file per attempt, never to the master's log.

    <state-dir>/output/<job id>/<attempt>.log

Why a file the child writes itself, not a pipe the master reads: a child
outlives its master's exec (USR2), a fork-mode replacement and a master's
crash, and its output must go on being kept through all three. A pipe would
need a reader that survives them too (or the job would block, or die of
SIGPIPE, when it is gone); a file needs nobody, and the master never reads,
buffers or waits for any of it. The child opens the file once it knows its
job (after its order), makes it its fd 1 and 2 (so C code, subprocesses and
grandchildren write there too), and keeps its own descriptor of it.

Bounded: a thread of the child checks the file's size (every half second, and
every 20 ms while it grows) and, past `max_bytes`, keeps only its last half
behind a line saying how much was dropped. Pruned: a job keeps the files of
its last KEEP_ATTEMPTS attempts; an attempt that wrote nothing leaves none.

Read with `phoenix logs KEY` (`-f` follows until the attempt ends).
"""

from __future__ import annotations

import codecs
import errno
import os
import sys
import time
from typing import IO, BinaryIO

from phoenix.untrusted import visible

OUTPUT_DIR = "output"
DEFAULT_MAX_BYTES = 1024 * 1024  # per attempt (job_output_max_bytes)
MIN_MAX_BYTES = 4096
KEEP_ATTEMPTS = 3  # a job keeps the output of its last three attempts
# In a job child whose stderr is its output: the stderr it had before (its
# master's), where a job's `logging` records go (see forkserver._set_up_logging).
log_stream: IO[str] | None = None
IDLE_CHECK = 0.5  # seconds between two checks of a file that does not grow
BUSY_CHECK = 0.02  # ... of one that grows
_LINE_SEARCH = 4096  # a trimmed file starts at a line if one starts this near its cut


def job_dir(root: str | os.PathLike[str], job_id: int) -> str:
    return f"{os.fspath(root)}/{job_id}"


def attempt_file(root: str | os.PathLike[str], job_id: int, attempt: int) -> str:
    return f"{job_dir(root, job_id)}/{attempt}.log"


def trim_note(dropped: int, max_bytes: int) -> bytes:
    return (f"[phoenix: {dropped} bytes of this attempt's earlier output dropped here, to keep it within "
            f"job_output_max_bytes = {max_bytes}]\n").encode()


class Capture:
    """This child's output file: fd 1 and 2 point at it, `fd` is its own."""

    def __init__(self, fd: int, path: str, max_bytes: int, saved_stderr: int | None) -> None:
        self.fd = fd
        self.path = path
        self.max_bytes = max_bytes
        self.saved_stderr = saved_stderr  # the stderr the child had before (the master's), close-on-exec
        stat = os.fstat(fd)
        self.identity = (stat.st_dev, stat.st_ino)
        self.dropped = 0

    @classmethod
    def start(cls, root: str, job_id: int, attempt: int, max_bytes: int) -> "Capture | None":
        """Point this process's stdout and stderr at the attempt's file. None
        if it cannot be created (no space, no inodes): then they point at
        /dev/null, never at the master's log, and the job runs all the same."""
        for stream in (sys.stdout, sys.stderr):  # what was written before is not the job's
            if stream is not None:
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
        saved: int | None
        try:
            saved = os.dup(2)
            os.set_inheritable(saved, False)
        except OSError:
            saved = None
        path = attempt_file(root, job_id, attempt)
        try:
            fd = _create(root, job_id, attempt, path)
        except OSError:
            devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.close(devnull)
            return None
        os.dup2(fd, 1)  # inheritable: the job's subprocesses write here too
        os.dup2(fd, 2)
        try:
            # Line by line, as on a terminal: `phoenix logs -f` shows a print when it is made.
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            pass  # replaced by the app with something else: its own business
        return cls(fd, path, max_bytes, saved)

    def saved_stream(self) -> IO[str] | None:
        """The stderr this child had before the capture, as a text stream:
        where the job's `logging` records go (with the master's)."""
        if self.saved_stderr is None:
            return None
        return open(self.saved_stderr, "w", buffering=1, encoding="utf-8", errors="backslashreplace",
                    closefd=False)

    def _own_fd(self) -> int | None:
        """A descriptor of the file, checked: a job that closed fds may have
        reused the number for a file of its own, which is never trimmed."""
        try:
            stat = os.fstat(self.fd)
            if (stat.st_dev, stat.st_ino) == self.identity:
                return self.fd
        except OSError:
            pass
        try:  # by its path (the job closed our descriptor); the number we had may be the job's now: left alone
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        stat = os.fstat(fd)
        if (stat.st_dev, stat.st_ino) != self.identity:
            os.close(fd)
            return None
        self.fd = fd
        return fd

    def size(self) -> int | None:
        fd = self._own_fd()
        return None if fd is None else os.fstat(fd).st_size

    def trim(self) -> None:
        """Keep the last half of the limit, behind a line saying what went.
        What the job appends between the read and the truncation is lost
        with the rest: the file is being flooded."""
        fd = self._own_fd()
        if fd is None:
            return
        size = os.fstat(fd).st_size
        if size <= self.max_bytes:
            return
        keep = self.max_bytes // 2
        tail = os.pread(fd, keep, size - keep)
        line_start = tail.find(b"\n", 0, _LINE_SEARCH)
        if line_start >= 0:
            tail = tail[line_start + 1:]
        self.dropped += size - len(tail)
        os.ftruncate(fd, 0)
        _write_all(fd, trim_note(self.dropped, self.max_bytes) + tail)  # O_APPEND: at the end, wherever that is

    def watch(self) -> None:
        """A thread's whole life: keep the file within its limit."""
        last = -1
        while True:
            try:
                size = self.size()
                if size is None:
                    return  # gone (removed by hand): nothing left to bound
                if size > self.max_bytes:
                    self.trim()
            except OSError:
                size = last  # a full disk, say: try again at the next turn
            time.sleep(BUSY_CHECK if size != last else IDLE_CHECK)
            last = size

    def finish(self) -> None:
        """At the child's end: the file within its limit (what came since the
        last check), or none at all for an attempt that wrote nothing."""
        try:
            self.trim()
            if self.size() == 0:
                os.unlink(self.path)
                os.rmdir(os.path.dirname(self.path))  # only if no other attempt left a file there
        except OSError:
            pass


def _create(root: str, job_id: int, attempt: int, path: str) -> int:
    directory = job_dir(root, job_id)
    for folder in (root, directory):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
    _prune(directory, attempt)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:  # left by a journal restored from a copy: the attempt number is this one's now
        os.unlink(path)
        return os.open(path, flags, 0o600)


def _prune(directory: str, attempt: int) -> None:
    """Older attempts' files beyond the last KEEP_ATTEMPTS; at a job's first
    attempt, anything there (a pruned job's, whose id came back)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        number, dot, suffix = name.partition(".")
        stale = attempt == 1 or not (number.isdigit() and dot and suffix == "log")
        if stale or int(number) <= attempt - KEEP_ATTEMPTS:
            try:
                os.unlink(f"{directory}/{name}")
            except OSError:
                pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- the reading side: `phoenix logs` --------------------------------------------------


class Reader:
    """Reads an attempt's file from where it last stopped; a file trimmed
    meanwhile (shorter than what was read) is read again from its start,
    which is the line saying what was dropped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return b""  # a link planted where the file should be: not ours to follow
            raise
        try:
            if os.fstat(fd).st_size < self.offset:
                self.offset = 0
            chunks = []
            while chunk := os.pread(fd, 1 << 20, self.offset):
                chunks.append(chunk)
                self.offset += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)


class Printer:
    """Writes a job's bytes to our stdout: as they are to a pipe or a file
    (`phoenix logs KEY > out`), with every control character but newline and
    tab shown as an escape on a terminal, so that a job cannot drive it."""

    def __init__(self, out: BinaryIO, terminal: bool) -> None:
        self.out = out
        self.terminal = terminal
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.terminal:
            data = visible(self.decoder.decode(data), multiline=True).encode()
        self.out.write(data)
        self.out.flush()
