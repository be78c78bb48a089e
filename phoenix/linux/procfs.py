"""Facts about processes read from /proc: the start time that tells a live
job from a reused pid, the parent pid, and memory use."""

from __future__ import annotations

import os

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def stat_fields(pid: int) -> list[str] | None:
    # os.open/os.read, not open(): the master reads this once per spawn, and
    # a file object's buffers cost more than the read (memory touched after a
    # fork is memory copied).
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        raw = os.read(fd, 4096).decode("ascii", "replace")
    except ProcessLookupError:  # the process ended between open and read
        return None
    finally:
        os.close(fd)
    # The command name (field 2) may hold spaces and parentheses: split after
    # the last ')' so field numbers stay right.
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest  # rest[0] is field 3 (state)


def start_time(pid: int) -> int | None:
    """Clock ticks since boot at which `pid` started (field 22), or None if
    there is no such process. Together with the pid it names one process for
    good: a reused pid has a different start time."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return int(fields[19])


def state(pid: int) -> str | None:
    """One-letter scheduler state ('R', 'S', 'T', 'Z', ...) or None."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def parent_pid(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def is_same_process(pid: int, recorded_start_time: int | None) -> bool:
    """True when `pid` is alive (not a zombie) and is the very process that was
    recorded, not another one that got the same pid later."""
    return parent_and_sameness(pid, recorded_start_time)[1]


def parent_and_sameness(pid: int, recorded_start_time: int | None) -> tuple[int | None, bool]:
    """(parent pid or None, is_same_process) from one read of /proc/PID/stat:
    adoption asks both of every running attempt while the socket waits."""
    fields = stat_fields(pid)
    if fields is None:
        return None, False
    same = fields[0] not in ("Z", "X") and (recorded_start_time is None or int(fields[19]) == recorded_start_time)
    return int(fields[1]), same


def process_group(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[2]) if fields else None


def titled_group_leaders(title: str) -> list[tuple[int, int]]:
    """(pid, start time) of every live process that leads its own process
    group and whose title (its /proc/PID/cmdline, as setproctitle wrote it)
    is `title` or `title` followed by ": ..." (a job child holding its
    outcome says so after its title). One scan of /proc: for an attempt
    whose recorded pid another tool damaged."""
    found: list[tuple[int, int]] = []
    wanted = title.encode("utf-8", "surrogateescape")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                # argv[0] as setproctitle wrote it, padded with NULs or spaces up to argv's old length
                shown = f.read(4096).split(b"\0", 1)[0].rstrip(b" ")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if shown != wanted and not shown.startswith(wanted + b":"):
            continue
        fields = stat_fields(pid)
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pid:
            found.append((pid, int(fields[19])))
    return found


def children(pid: int) -> list[int]:
    """The live and zombie children of `pid`: the union of its threads'
    /proc/PID/task/TID/children (a child belongs to the thread that forked it;
    an orphan handed to a subreaper, to its main thread)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(map(int, f.read().split()))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # the thread ended
    return found


def descendants(pid: int, limit: int = 10_000) -> list[tuple[int, int]]:
    """(descendant, its parent) for every process under `pid`, parents first."""
    found: list[tuple[int, int]] = []
    parents = [pid]
    while parents and len(found) < limit:
        parent = parents.pop()
        for child in children(parent):
            found.append((child, parent))
            parents.append(child)
    return found


def own_fds() -> list[int]:
    """This process's open fds above stdin, stdout and stderr."""
    return [fd for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2]


def rss_bytes(pid: int) -> int | None:
    """Resident memory, or None when unknown: gone, or not readable now (out of descriptors)."""
    # os.open/os.read, not open(): `phoenix status` reads this for every
    # running child, in the master's loop (a file object costs 3x the read).
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return int(os.read(fd, 256).split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None
    finally:
        os.close(fd)
