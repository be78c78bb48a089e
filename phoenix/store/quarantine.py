"""Records the master cannot process when it reads them back (an outcome in
the outbox that is not a valid message, a final held in the store that does
not parse, an outcome the store refuses to take) are put aside here rather
than crash the master, and crash it again at every start after.

Each is one file in `<state-dir>/quarantine/`, written once with one log line
(`quarantined`): what it was, why it was put aside, and the record itself
(as text; bytes that are not UTF-8 appear as `\\xNN`). Nothing in it is ever
run or acted on. `phoenix status` counts them, `phoenix quarantine` shows
them, `phoenix quarantine --clear` deletes them once looked at."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from phoenix import log
from phoenix.linux.untrusted import visible

DIRECTORY = "quarantine"
SUFFIX = ".json"
MAX_RECORD_BYTES = 1024 * 1024  # of a record kept: more is cut (an outbox file is at most a message)


def directory(state_dir: Path) -> Path:
    return state_dir / DIRECTORY


def keep(state_dir: Path, what: str, record: bytes | str, reason: str, **context: Any) -> str | None:
    """Put `record` aside with the reason, and log it once; the file's name,
    or None if it could not be written (the log line says so, and still
    carries the reason: the master goes on either way)."""
    data = record.encode("utf-8", "backslashreplace") if isinstance(record, str) else record
    entry = {"what": what, "reason": reason, "at": time.time(), **context,
             "bytes": len(data), "record": data[:MAX_RECORD_BYTES].decode("utf-8", "backslashreplace")}
    # Random, not a counter: a replaced image keeps the pid and starts counting again.
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{what}-{os.getpid()}-{os.urandom(4).hex()}{SUFFIX}"
    folder = directory(state_dir)
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        # O_NOFOLLOW on the directory and O_EXCL on the file: never through a
        # planted link; 0600: a record may be sensitive.
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
            try:
                content = json.dumps(entry, indent=1).encode()  # ASCII: every character escaped
                written = 0
                while written < len(content):
                    written += os.write(fd, content[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(dir_fd)  # the new name survives a power cut
        finally:
            os.close(dir_fd)
    except OSError as exc:
        log.event(logging.ERROR, "quarantined", what=what, reason=visible(reason), **context,
                  kept="no", error=f"cannot write into {folder}: {exc.strerror}")
        return None
    log.event(logging.ERROR, "quarantined", what=what, reason=visible(reason), **context, file=name,
              see="phoenix quarantine")
    return name


def names(state_dir: Path) -> list[str]:
    """The records put aside, oldest first (their names start with the time)."""
    try:
        return sorted(name for name in os.listdir(directory(state_dir)) if name.endswith(SUFFIX))
    except (FileNotFoundError, NotADirectoryError):
        return []


def read(state_dir: Path, name: str) -> dict[str, Any]:
    """One record as written by `keep`; what is not readable as one says so in `reason`."""
    try:
        entry = json.loads((directory(state_dir) / name).read_bytes())
        if isinstance(entry, dict):
            return entry
    except (OSError, ValueError, RecursionError) as exc:
        return {"what": "?", "reason": f"cannot read this quarantine file: {exc}"}
    return {"what": "?", "reason": "not a quarantine record"}


def clear(state_dir: Path, chosen: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Delete the named records (all with None): (deleted, not found)."""
    present = names(state_dir)
    wanted = present if chosen is None else list(dict.fromkeys(chosen))
    deleted, missing = [], []
    for name in wanted:
        if name not in present:  # a name is never a path: only the directory's own files go
            missing.append(name)
            continue
        try:
            os.unlink(directory(state_dir) / name)
            deleted.append(name)
        except FileNotFoundError:
            missing.append(name)
    if deleted:  # "deleted" is an acknowledgement: on disk first (a power cut would bring them back)
        fd = os.open(directory(state_dir), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return deleted, missing
