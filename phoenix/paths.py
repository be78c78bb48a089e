"""Where everything lives inside the state directory."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# sun_path holds 108 bytes; Python refuses more, and 107 leaves the kernel its
# terminating NUL. Longer socket paths go through unix_address below.
SUN_PATH_MAX = 107
# SQLite's unix VFS opens nothing whose full (symlink-resolved) path is 512
# bytes or more, counting the "-journal" it may append to the database's name.
SQLITE_MAX_PATHNAME = 512
NAME_MAX = 255  # bytes of one path component (Linux file systems)


class StateDirError(OSError):
    """The state directory cannot be created or written."""


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

    def ensure(self) -> None:
        """Create the directory (mode 0700: sockets and journal are private to
        this user) and check that it can be written."""
        self.check_length()
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.outbox.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateDirError(f"cannot create the state directory {self.root}: {exc.strerror}. "
                                "Choose another with --state-dir or fix its permissions") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StateDirError(f"the state directory {self.root} is not writable by this user (uid {os.getuid()}); "
                                "choose another with --state-dir or fix its permissions")


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
