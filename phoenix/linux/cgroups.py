"""Memory cgroups: where the master's own is, which version's files it has,
and the few operations Phoenix does on the cgroups it makes (mkdir, write a
limit, move a pid in, read the OOM counters, kill what is left, rmdir).

The two versions differ in file names and formats only, kept in `Files`:
v1 (the memory controller's own hierarchy: memory.limit_in_bytes,
memory.oom_control's `oom_kill` line, memory.max_usage_in_bytes) and v2
(the unified hierarchy: memory.max, memory.events' `oom` and `oom_kill`,
cgroup.kill). What to do with them is master/cgroups.py's. The parsers are
pure (tests/unit/test_cgroups.py); the rest touches the kernel's files."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

V1, V2 = 1, 2


@dataclass(frozen=True, slots=True)
class Files:
    version: int
    controllers: str | None  # v2: the controllers a cgroup offers (v1: the hierarchy is the memory controller)
    limit: str  # the limit, in bytes
    swap_limit: str  # v1: memory + swap (only where swap is accounted); v2: swap alone
    events: str  # the OOM counters: flat "key value" lines in both versions
    peak: str | None  # v1: the most it ever held (v2 tells a limit's kill by its own `oom` count)
    kill: str | None  # v2 (Linux 5.14+): "1" kills every process in it


FILES = {
    V1: Files(V1, None, "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.oom_control",
              "memory.max_usage_in_bytes", None),
    V2: Files(V2, "cgroup.controllers", "memory.max", "memory.swap.max", "memory.events", None, "cgroup.kill"),
}
PROCS = "cgroup.procs"


# -- where the master's cgroup is (pure) ---------------------------------------------


def own_paths(proc_cgroup: str) -> dict[int, str]:
    """/proc/PID/cgroup's text -> {V1: path in the memory hierarchy, V2: path in the unified one}, as present."""
    paths: dict[int, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            paths[V2] = path
        elif "memory" in controllers.split(","):
            paths[V1] = path
    return paths


def mounts(mountinfo: str) -> dict[int, tuple[str, str]]:
    """/proc/self/mountinfo's text -> {version: (mount point, the cgroup path mounted there)}:
    the memory controller's v1 mount and the v2 mount (the first of each)."""
    found: dict[int, tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if len(fields) < dash + 4 or dash < 5:
            continue
        root, point, fstype, options = fields[3], _unescape(fields[4]), fields[dash + 1], fields[dash + 3]
        if fstype == "cgroup2" and V2 not in found:
            found[V2] = (point, _unescape(root))
        elif fstype == "cgroup" and "memory" in options.split(",") and V1 not in found:
            found[V1] = (point, _unescape(root))
    return found


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def directory(mount_point: str, mount_root: str, path: str) -> str | None:
    """The directory of cgroup `path` under a mount of `mount_root`; None if
    it is not visible there (a container that mounted only its own part)."""
    root = mount_root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    rest = path[len(root):].lstrip("/")
    return os.path.join(mount_point, rest) if rest else mount_point


def counters(text: str) -> dict[str, int]:
    """memory.oom_control (v1) or memory.events (v2): "key value" lines."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            values[parts[0]] = int(parts[1])
    return values


# -- the kernel's files ----------------------------------------------------------------


def read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def write(path: str, value: str) -> None:
    """One write(2) of the whole value: the kernel takes each write as one command."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode("ascii"))
    finally:
        os.close(fd)


def offers_memory(directory: str, files: Files) -> bool:
    """v2: the memory controller is available to this cgroup (v1: its hierarchy is the controller)."""
    if files.controllers is None:
        return True
    return "memory" in read(os.path.join(directory, files.controllers)).split()


def processes(directory: str) -> list[int]:
    try:
        return [int(pid) for pid in read(os.path.join(directory, PROCS)).split()]
    except FileNotFoundError:
        return []


def kill_all(directory: str, files: Files) -> None:
    """SIGKILL every process in the cgroup (cgroup.kill where there is one).
    Without it, each pid is named by a pidfd and signalled only if it is
    still in the cgroup once the pidfd is open (a pid reused meanwhile names
    a process elsewhere). A process forked meanwhile is left for the next
    call (master/cgroups.py tries again until the cgroup is empty)."""
    if files.kill is not None and os.path.exists(os.path.join(directory, files.kill)):
        write(os.path.join(directory, files.kill), "1")
        return
    pidfds: dict[int, int] = {}
    try:
        for pid in processes(directory):
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                pass
        still = set(processes(directory))
        for pid, pidfd in pidfds.items():
            if pid in still:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)
