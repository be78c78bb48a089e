"""Where everything lives inside the state directory."""

from __future__ import annotations

import errno
import os
import pwd
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from phoenix.errors import StateError

# sun_path holds 108 bytes; Python refuses more, and 107 leaves the kernel its
# terminating NUL. Longer socket paths go through unix_address below.
SUN_PATH_MAX = 107
# SQLite's unix VFS opens nothing whose full (symlink-resolved) path is 512
# bytes or more, counting the "-journal" it may append to the database's name.
SQLITE_MAX_PATHNAME = 512
NAME_MAX = 255  # bytes of one path component (Linux file systems)


class StateDirError(StateError, OSError):
    """The state directory cannot be created or written, is not a directory,
    or is not this user's alone."""


# The files Phoenix opens by name in the state directory: none may be a link,
# another user's, or writable by others (a planted file is a planted job).
STATE_FILE_NAMES = ("journal.db", "journal.db-wal", "journal.db-shm", "phoenix.pid", "phoenix.pid.oldbin",
                    "phoenix.lock", "phoenix.sock", "control.sock", "outbox", "output", "quarantine", "phoenix.log")
# What each state file must be, if it is there: anything else (a FIFO at the journal's name, where a read
# would hang every command) is refused in one line.
_KINDS = {"phoenix.sock": (stat.S_ISSOCK, "a socket"), "control.sock": (stat.S_ISSOCK, "a socket"),
          "outbox": (stat.S_ISDIR, "a directory"), "output": (stat.S_ISDIR, "a directory"),
          "quarantine": (stat.S_ISDIR, "a directory")}
_REGULAR = (stat.S_ISREG, "a regular file")


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _owner(uid: int) -> str:
    name = _name(uid)
    return f"uid {uid}" if name == str(uid) else f"{name} (uid {uid})"


def _writable_by_others(mode: int) -> str | None:
    """Who besides the owner may write a file of this mode, or None."""
    if mode & 0o022 == 0o022:
        return "group and others"
    return "group" if mode & 0o020 else "others" if mode & 0o002 else None


@dataclass(frozen=True)
class StatePaths:
    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root).absolute())

    @property
    def pidfile(self) -> Path:
        return self.root / "phoenix.pid"

    @property
    def lockfile(self) -> Path:
        # Held (flock) by the live master for its whole life, across exec; the
        # pidfile itself is replaced atomically, so it cannot carry the lock.
        return self.root / "phoenix.lock"

    @property
    def heartbeat_socket(self) -> Path:
        return self.root / "phoenix.sock"

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def journal(self) -> Path:
        return self.root / "journal.db"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def output(self) -> Path:
        # Each job's own output, one file per attempt, written by its child (see output.py).
        return self.root / "output"

    def check_length(self) -> None:
        """Refuse, before anything is created or recorded, a directory whose
        files nothing could open. A socket path over AF_UNIX's limit is not
        such a case: unix_address reaches it through a short name."""
        resolved = self.root.resolve()  # SQLite's limit applies to the real path
        longest = SQLITE_MAX_PATHNAME - len(b"/journal.db-journal")
        size = len(os.fsencode(resolved))
        if size > longest:
            shown = f"{self.root}" if resolved == self.root else f"{self.root} (really {resolved})"
            raise StateDirError(f"the state directory {shown} is {size} bytes long; its journal (SQLite) can only be "
                                f"opened under a path of at most {longest} bytes: choose a shorter --state-dir")
        for part in resolved.parts:
            if len(os.fsencode(part)) > NAME_MAX:
                raise StateDirError(f"the state directory {self.root} has a path component of "
                                    f"{len(os.fsencode(part))} bytes, over the {NAME_MAX}-byte limit of one file "
                                    "name: choose a shorter --state-dir")
        if len(os.fsencode(self.heartbeat_socket)) > SUN_PATH_MAX and not os.path.isdir("/proc/self/fd"):
            raise StateDirError(f"the sockets in {self.root} have paths over AF_UNIX's {SUN_PATH_MAX}-byte limit, "
                                "and without /proc mounted they cannot be reached by a short name: "
                                "choose a shorter --state-dir")

    def check_trusted(self) -> bool:
        """Refuse (StateDirError) a state directory that is not a directory,
        lies under a file, or is not this user's alone: owned by another user,
        writable by group or others, reached through a link or a parent
        directory another user could swap, or holding a state file that is a
        link or another user's. As PostgreSQL and OpenSSH refuse theirs: in
        such a directory another user could plant links that make Phoenix
        write over files elsewhere, jobs that it would run as this user, or a
        control socket that would receive this user's commands. True if the
        directory exists, False if it does not (yet)."""
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            check_parents(self.root, "the state directory")
            return False
        except NotADirectoryError:
            raise StateDirError(f"the state directory {self.root} is under a file, not a directory: "
                                "choose another with --state-dir") from None
        except OSError as exc:
            raise StateDirError(f"cannot reach the state directory {self.root}: {exc.strerror}; "
                                "choose another with --state-dir or fix its permissions") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StateDirError(f"the state directory {self.root} is a file, not a directory: "
                                "choose another with --state-dir, or move the file away")
        check_parents(self.root, "the state directory")
        resolved = Path(os.path.realpath(self.root))
        shown = f"{self.root}" if resolved == self.root else f"{self.root} (really {resolved})"
        uid = os.geteuid()
        if st.st_uid != uid:
            raise StateDirError(f"the state directory {shown} belongs to {_owner(st.st_uid)}, not to {_owner(uid)} "
                                "who runs phoenix: run phoenix as its owner, or choose a directory of your own "
                                "with --state-dir")
        others = _writable_by_others(st.st_mode)
        if others:
            raise StateDirError(f"the state directory {shown} is writable by {others} (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}): `chmod go-w {resolved}` (Phoenix makes it 0700), "
                                "or choose another with --state-dir")
        for name in STATE_FILE_NAMES:
            self._check_state_file(self.root / name, uid)
        return True

    def _check_state_file(self, path: Path, uid: int) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise StateDirError(f"{path} is a symbolic link (to {os.readlink(path)}): Phoenix follows no link in "
                                "its state directory; remove it, or choose another --state-dir")
        if st.st_uid != uid:
            raise StateDirError(f"{path} belongs to {_owner(st.st_uid)}, not to {_owner(uid)} who runs phoenix: "
                                f"if it is this service's own, `chown {_name(uid)} {path}`; if not, remove it")
        is_kind, kind = _KINDS.get(path.name, _REGULAR)
        if not is_kind(st.st_mode):
            raise StateDirError(f"{path} is not {kind}, as Phoenix's own would be: move it away, or choose another "
                                "--state-dir")
        # A socket's mode only decides who may connect, and each master checks
        # its peers (SO_PEERCRED); a file or directory others can write is a planted job.
        others = None if stat.S_ISSOCK(st.st_mode) else _writable_by_others(st.st_mode)
        if others:
            raise StateDirError(f"{path} is writable by {others} (mode {stat.S_IMODE(st.st_mode):04o}): "
                                f"`chmod go-w {path}`")

    def ensure(self) -> None:
        """Create the directory (mode 0700: sockets and journal are private to
        this user; missing parents 0755, whatever the umask), check that it is
        ours alone (check_trusted) and that it can be written."""
        self.check_length()
        self.check_trusted()
        try:
            _make_parents(self.root.parent)
            _make_directory(self.root, 0o700)
            _make_directory(self.outbox, 0o700)
        except OSError as exc:
            raise StateDirError(f"cannot create the state directory {self.root}: {exc.strerror}. "
                                "Choose another with --state-dir or fix its permissions") from None
        self.check_trusted()  # again: what exists now, whoever made it
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StateDirError(f"the state directory {self.root} is not writable by this user (uid {os.getuid()}); "
                                "choose another with --state-dir or fix its permissions")


def check_parents(path: Path, what: str) -> None:
    """Every directory that holds a step of the way to `path` (and every
    link on it) must be this user's or root's, and not writable by others
    unless sticky (/tmp): otherwise another user could swap `path`, or a link
    to it, for one of theirs after it was checked (a link planted in /tmp
    named like the log file, say). A group-writable parent is allowed (a
    shared deploy directory, a volume's fsGroup); a state directory itself
    never is (StatePaths.check_trusted). `what` names `path` in the error."""
    uid = os.geteuid()
    seen: set[Path] = set()

    def check_directory_chain(directory: Path) -> None:
        for step in (directory, *directory.parents):
            if step in seen:
                continue
            seen.add(step)
            try:
                st = os.stat(step)
            except OSError:
                continue  # not there (yet): nothing to swap in it
            if st.st_uid not in (0, uid):
                raise StateDirError(f"{what} {path} lies under {step}, which belongs to {_owner(st.st_uid)}: that "
                                    "user could swap it for another; choose a path under directories of your own "
                                    "(or root's)")
            if st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
                raise StateDirError(f"{what} {path} lies under {step}, which anyone can write (mode "
                                    f"{stat.S_IMODE(st.st_mode):04o}, not sticky): anyone could swap it for another; "
                                    f"`chmod o-w {step}`, or choose another path")

    def walk(given: Path, links_left: int) -> Path | None:
        """Check each step of `given`; where it really leads, or None once a step is missing."""
        real = Path(given.anchor)
        for part in given.parts[1:]:
            check_directory_chain(real)  # the directory that holds the next step
            real = Path(os.path.normpath(real / part))  # ".." as the kernel takes it, after a resolved link
            try:
                st = os.lstat(real)
            except OSError:
                return None  # missing from here on (or under a file: the caller says so)
            if stat.S_ISLNK(st.st_mode):
                if st.st_uid not in (0, uid):
                    raise StateDirError(f"{what} {path} is reached through {real}, a symbolic link that belongs "
                                        f"to {_owner(st.st_uid)}: give the real path")
                if links_left == 0:
                    return None  # a loop: the open fails with ELOOP, nothing to check
                resolved = walk(real.parent / os.readlink(real), links_left - 1)
                if resolved is None:
                    return None
                real = resolved
        return real

    walk(path, 40)  # the kernel follows at most 40 links


def exclusive_temporary(directory: str | os.PathLike[str], prefix: str, suffix: str = "") -> tuple[int, str]:
    """A new file in `directory` (mode 0600 before the umask) whose name is
    `prefix`, 12 random hex digits, `suffix`: (fd, path). O_EXCL and
    O_NOFOLLOW, so no link planted at the name is followed. What
    tempfile.mkstemp does, without importing tempfile (and with it shutil,
    random, bz2, lzma): 3-5 ms of every new master image's blind window."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):  # (a clash of 48 random bits: in practice never)
        path = os.path.join(directory, f"{prefix}{os.urandom(6).hex()}{suffix}")
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", os.fspath(directory))


def _make_directory(path: Path, mode: int) -> None:
    """mkdir, then exactly `mode`, whatever the umask (000 would leave
    parents 0777; 0277 would leave a state directory this user cannot write).
    One that exists is left as it is (check_trusted judges it)."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    os.chmod(path, mode)


def _make_parents(directory: Path) -> None:
    """mkdir -p, each new directory 0755."""
    if directory.is_dir():
        return
    _make_parents(directory.parent)
    _make_directory(directory, 0o755)


@contextmanager
def unix_address(path: str | os.PathLike[str]) -> Iterator[str]:
    """An address that bind, connect and sendto accept for the socket at
    `path`, however long: the path itself when it fits in sun_path, else
    /proc/self/fd/<fd>/<name> through an O_PATH fd of its directory, open in
    this process (children included) only for the duration of the call.
    The directory is looked up now, so a rebuilt state directory is found."""
    raw = os.fsencode(path)
    if len(raw) <= SUN_PATH_MAX:
        yield os.fsdecode(raw)
        return
    directory, name = os.path.split(raw)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.fsdecode(name)}"
    finally:
        os.close(fd)
