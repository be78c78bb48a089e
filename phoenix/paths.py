"""Where everything lives inside the state directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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

    def ensure(self) -> None:
        """Create the directory (mode 0700: sockets and journal are private to
        this user) and check that it can be written."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.outbox.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateDirError(f"cannot create the state directory {self.root}: {exc.strerror}. "
                                "Choose another with --state-dir or fix its permissions") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StateDirError(f"the state directory {self.root} is not writable by this user (uid {os.getuid()}); "
                                "choose another with --state-dir or fix its permissions")
