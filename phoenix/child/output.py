"""A job's own output: what its process and everything it starts write to
stdout and stderr goes to one file per attempt, never to the master's log.

    <state-dir>/output/<job id>.<attempt>.log

Why a file the child writes itself, not a pipe the master reads: a child
outlives its master's exec (USR2), a fork-mode replacement and a master's
crash, and its output must go on being kept through all three. A pipe would
need a reader that survives them too (or the job would block, or die of
SIGPIPE, when it is gone); a file needs nobody, and the master never reads,
buffers or waits for any of it. The child opens the file once it knows its
job (after its order), makes it its fd 1 and 2 (so C code, subprocesses and
grandchildren write there too), and keeps its own descriptor of it.

Bounded: the child's beat thread looks at the file's size at each beat; once
it passes half of `max_bytes`, a thread of its own checks it every 20 ms
while it grows (every half second when it does not) and, past `max_bytes`,
keeps only its last half behind a line saying how much was dropped; the
child's last act trims it once more. Pruned: a job keeps the files of its
last KEEP_ATTEMPTS attempts; an attempt that wrote nothing leaves none. One
flat directory, no directory per job: a mkdir and an rmdir per job cost more
than the rest of the capture together.

Read with `phoenix logs KEY` (`-f` follows until the attempt ends).
"""

from __future__ import annotations

import _thread
import codecs
import errno
import io
import os
import sys
import time
from typing import IO, Any, BinaryIO

from phoenix.linux.untrusted import visible

OUTPUT_DIR = "output"
DEFAULT_MAX_BYTES = 1024 * 1024  # per attempt (job_output_max_bytes)
MIN_MAX_BYTES = 4096
KEEP_ATTEMPTS = 3  # a job keeps the output of its last three attempts
# In a job child whose stderr is its output: the stderr it had before (its
# master's), where a job's `logging` records go (see log_stream).
_saved_stderr: int | None = None
_log_stream: IO[str] | None = None
IDLE_CHECK = 0.5  # seconds between two checks of a file that does not grow
BUSY_CHECK = 0.02  # ... of one that grows
_LINE_SEARCH = 4096  # a trimmed file starts at a line if one starts this near its cut
DROPPED_XATTR = "user.phoenix.dropped"  # bytes cut from the head of an attempt's file in place


def attempt_file(root: str | os.PathLike[str], job_id: int, attempt: int) -> str:
    return f"{os.fspath(root)}/{job_id}.{attempt}.log"


def job_of_file(name: str) -> int | None:
    """The job id of an attempt's file name (JOB.N.log), or None."""
    job, dot, rest = name.partition(".")
    attempt, dot2, suffix = rest.partition(".")
    ok = job.isdigit() and attempt.isdigit() and dot and dot2 and suffix == "log"
    return int(job) if ok else None


def trim_note(dropped: int) -> bytes:
    return (f"[phoenix: {dropped} bytes of this attempt's earlier output dropped here, to keep it within "
            "job_output_max_bytes]\n").encode()


class Capture:
    """This child's output file: fd 1 and 2 point at it, `fd` is its own."""

    __slots__ = ("fd", "path", "max_bytes", "identity", "dropped", "watched", "lock", "released")

    def __init__(self, fd: int, path: str, max_bytes: int) -> None:
        self.fd = fd
        self.path = path
        self.max_bytes = max_bytes
        stat = os.fstat(fd)
        self.identity = (stat.st_dev, stat.st_ino)
        self.dropped = 0
        self.watched = False  # a thread of its own checks it (see check)
        self.released = False  # the job is over: its descriptors point at /dev/null (see release)
        self.lock = _thread.allocate_lock()  # one trim at a time: the watching thread's, or the child's last

    @classmethod
    def start(cls, root: str, job_id: int, attempt: int, max_bytes: int, streams_prepared: bool = False,
              ) -> "Capture | None":
        """Point this process's stdout and stderr at the attempt's file. None
        if it cannot be created (no space, no inodes): then they point at
        /dev/null, never at the master's log, and the job runs all the same.
        `streams_prepared`: the parent flushed sys.stdout and sys.stderr and
        made stdout line-buffered before it forked (see prepare_streams)."""
        global _saved_stderr
        if not streams_prepared:
            prepare_streams()
        try:
            _saved_stderr = os.dup(2)
            os.set_inheritable(_saved_stderr, False)
        except OSError:
            _saved_stderr = None
        path = attempt_file(root, job_id, attempt)
        try:
            fd = _create(root, job_id, attempt)
        except OSError:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                os.close(devnull)
            except OSError:  # not even that (no file descriptors left on the system): closed, never the log
                os.closerange(1, 3)
            return None
        os.dup2(fd, 1)  # inheritable: the job's subprocesses write here too
        os.dup2(fd, 2)
        return cls(fd, path, max_bytes)

    def _own(self) -> tuple[int, int] | None:
        """(a descriptor of the file, its size), checked: a job that closed
        fds may have reused the number for a file of its own, which is never
        trimmed. None if the file is gone or replaced."""
        try:
            stat = os.fstat(self.fd)
            if (stat.st_dev, stat.st_ino) == self.identity:
                return self.fd, stat.st_size
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
        return fd, stat.st_size

    def size(self) -> int | None:
        own = self._own()
        return None if own is None else own[1]

    def trim(self) -> None:
        """Keep about the last half of the limit. Where the file system can
        (ext4, XFS), the head is cut out in place (FALLOC_FL_COLLAPSE_RANGE,
        whole blocks): the job's appends go on untouched, nothing it writes
        meanwhile is lost, and the count of bytes cut is kept in the file's
        DROPPED_XATTR for `phoenix logs` to say. Elsewhere (tmpfs) the tail
        is copied to the start behind a line saying what went, and what the
        job appends in the microseconds between that copy and the truncation
        is lost with the rest."""
        with self.lock:
            own = self._own()
            if own is None:
                return
            fd, size = own
            if size <= self.max_bytes:
                return
            block = os.fstat(fd).st_blksize or 4096
            cut = -(-(size - self.max_bytes // 2) // block) * block  # whole blocks, leaving at most half the limit
            if cut >= size:
                cut = (size - 1) // block * block  # a collapse must end before the end of the file
            if cut > 0 and _collapse(fd, cut):
                self.dropped += cut
                try:
                    os.setxattr(fd, DROPPED_XATTR, str(self.dropped).encode())
                except OSError:
                    pass  # no user xattrs here: `phoenix logs` cannot say how much went, only that some did
                return
            self._cut(fd, size)

    def _cut(self, fd: int, size: int) -> None:
        keep = self.max_bytes // 2
        for _ in range(3):
            tail = os.pread(fd, keep, size - keep)
            now = os.fstat(fd).st_size
            if now == size:
                break
            size = now
        line_start = tail.find(b"\n", 0, _LINE_SEARCH)
        if line_start >= 0:
            tail = tail[line_start + 1:]
        self.dropped += size - len(tail)
        os.ftruncate(fd, 0)
        _write_all(fd, trim_note(self.dropped) + tail)  # O_APPEND: at the end, wherever that is

    def check(self) -> None:
        """At each beat (the beat thread's): a file past half its limit gets
        a thread of its own that keeps it within the limit. Most jobs write
        little or nothing, and never start it."""
        if self.watched:
            return
        try:
            size = self.size()
        except OSError:
            return
        if size is not None and size > self.max_bytes // 2:
            self.watched = True
            _thread.start_new_thread(self.watch, ())

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
            size = self.size()
            if size == 0:
                os.unlink(self.path)
            elif size is not None and size > self.max_bytes:
                self.trim()
        except OSError:
            pass


    def release(self) -> None:
        """The job is over and its outcome is being handed over, which may
        take long (a master being replaced, a journal on a full or failed
        disk): the file within its limit, then fd 1 and 2 pointed at
        /dev/null and the file closed, so a child that waits holds nothing
        open on the state directory's file system (an operator could not
        unmount it to repair it)."""
        self.finish()
        with self.lock:
            self.released = True
            devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
            finally:
                os.close(devnull)
            try:
                os.close(self.fd)
            except OSError:
                pass  # closed by the job already


# A write the output's file system has no room for: dropped, never raised into the job.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class _KeptWriter(io.RawIOBase):
    """fd 1 or 2 under sys.stdout and sys.stderr of a job child: a full disk
    under the state directory is the host's shortage, not the job's, so a
    print is not made to fail the job for it (its text is lost, as a
    pipe's reader that is gone would lose it)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def write(self, data: Any) -> int:
        try:
            return os.write(self.fd, data)
        except OSError as exc:
            if exc.errno in _NO_ROOM:
                return len(memoryview(data).cast("B"))
            raise


def bound_after_end(root: str | os.PathLike[str], job_id: int, attempt: int, max_bytes: int) -> None:
    """An attempt whose process was killed (or died) cannot trim its file as
    it exits: its master does, once, as it records the end, so the file is
    within job_output_max_bytes whatever ended the job."""
    path = attempt_file(root, job_id, attempt)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # none (it wrote nothing), or not ours to open
    try:
        if os.fstat(fd).st_size > max_bytes:
            Capture(fd, path, max_bytes).trim()
    except OSError:
        pass  # a full disk, say: left as it is
    finally:
        os.close(fd)


def prepare_streams() -> None:
    """Once in a process that forks job children (the fork server, after the
    app's import), not in each child: nothing the app printed at import is
    left in a buffer that every child would write into its own output;
    sys.stdout and sys.stderr become streams over fds 1 and 2 that drop what
    a full disk refuses (see _KeptWriter), stdout line-buffered as on a
    terminal, so that `phoenix logs -f` shows a print when it is made."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            continue
        try:
            stream.flush()
            fd = stream.fileno()
        except (OSError, ValueError, AttributeError):
            continue  # closed, or replaced by the app with something else: its own business
        if fd not in (1, 2):
            continue
        kept = io.TextIOWrapper(io.BufferedWriter(_KeptWriter(fd)), encoding=getattr(stream, "encoding", "utf-8"),
                                errors=getattr(stream, "errors", "strict"), line_buffering=True)
        setattr(sys, name, kept)


def log_stream() -> IO[str] | None:
    """In a job child whose output is captured: the stderr it had before, as
    a text stream (made on first use), where the job's `logging` records go,
    as its master's do. None elsewhere."""
    global _log_stream
    if _log_stream is None and _saved_stderr is not None:
        _log_stream = open(_saved_stderr, "w", buffering=1, encoding="utf-8", errors="backslashreplace",
                           closefd=False)
    return _log_stream


def _create(root: str, job_id: int, attempt: int) -> int:
    """The attempt's file, new. One found at its name (a pruned job's whose
    id came back, a journal restored from a copy) is replaced: the number is
    this attempt's now. The attempt KEEP_ATTEMPTS before this one goes (each
    attempt removes one, so a job keeps its last KEEP_ATTEMPTS)."""
    path = attempt_file(root, job_id, attempt)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:  # the first job of this state directory
        try:
            os.mkdir(root, 0o700)
        except FileExistsError:
            pass
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        os.unlink(path)
        fd = os.open(path, flags, 0o600)
    if attempt > KEEP_ATTEMPTS:
        try:
            os.unlink(attempt_file(root, job_id, attempt - KEEP_ATTEMPTS))
        except OSError:
            pass  # it wrote nothing, or never ran
    return fd


_FALLOC_FL_COLLAPSE_RANGE = 0x08
_fallocate: Any = None  # libc's fallocate, loaded at the first trim: most jobs never need it


def _collapse(fd: int, length: int) -> bool:
    """Remove the first `length` bytes (whole blocks) of the file in place;
    False where the file system cannot (then nothing changed)."""
    global _fallocate
    try:
        if _fallocate is None:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
            _fallocate = libc.fallocate
        return bool(_fallocate(fd, _FALLOC_FL_COLLAPSE_RANGE, 0, length) == 0)
    except (OSError, AttributeError):
        return False


def dropped_bytes(fd: int) -> int:
    """How many bytes of the attempt's output were cut from the head of its
    file in place (see Capture.trim); 0 if none, or unknown."""
    try:
        return int(os.getxattr(fd, DROPPED_XATTR))
    except (OSError, ValueError):
        return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- the reading side: `phoenix logs` --------------------------------------------------


class Reader:
    """Reads an attempt's output from where it last stopped. `position`
    counts the whole output of the attempt, including what was cut from the
    file's head in place (DROPPED_XATTR), so a cut never makes it read a
    part twice; what was cut before it was read is said in a line. A file
    rewritten shorter instead (the copy-and-truncate trim) is read again
    from its start, which is the line saying what was dropped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.position = 0
        self.rewrites = 0  # the count in the note of the last copy-and-truncate trim seen

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
            dropped = dropped_bytes(fd)
            start = self.position - dropped
            unread = 0
            if start < 0:  # cut before it was read
                unread, start = -start, 0
            elif dropped == 0 and self._rewritten(fd):  # its start says what went: read from there
                start = 0
            chunks = []
            offset = start
            while chunk := os.pread(fd, 1 << 20, offset):
                chunks.append(chunk)
                offset += len(chunk)
            data = b"".join(chunks)
            self.position = dropped + offset
            if unread:  # a cut falls on a block, not a line: start at the next line
                line_start = data.find(b"\n", 0, _LINE_SEARCH)
                if line_start >= 0:
                    unread += line_start + 1
                    data = data[line_start + 1:]
                return trim_note(unread) + data
            return data
        finally:
            os.close(fd)

    def _rewritten(self, fd: int) -> bool:
        """Whether the file was trimmed by copy and truncation since the last
        read: it starts with a note whose count is new."""
        head = os.pread(fd, len(trim_note(1 << 62)), 0)
        if not head.startswith(b"[phoenix: "):
            return False
        count = head.split(b" ", 2)[1]
        if not count.isdigit() or int(count) == self.rewrites:
            return False
        self.rewrites = int(count)
        return True


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
