"""Per-job memory cgroups: the kernel enforces a job's `max_memory` where
the master may write to its own memory cgroup (cgroup v2: a delegated
cgroup, systemd `Delegate=yes`, a container with its own cgroup namespace;
cgroup v1: the memory hierarchy's, as root). Chosen once at start
(`open`); where neither can be used, the watchdog (memory.py) enforces.

Layout, under the master's own cgroup (the base):

    <base>/phoenix-<hash of the state dir>/        the group: this master's, made by it
        attempt-<attempt id>/                      one per attempt with a limit
        master/                                    v2 only: the master (and its unlimited children)

The master moves a waiting child into its attempt's cgroup before it sends
the child its order (scheduler.start), so no code of the job runs outside
it, and whatever the job forks is limited with it. When the attempt ends
(`ended`), the kernel's counters say whether its OOM killer ended it (its
own limit: reason max_memory; another: reason oom), what is left in the
cgroup is killed, and the cgroup removed. An adopted attempt (a USR2, a new
master after a crash) finds its cgroup by the attempt id in its name; any
other attempt cgroup in the group is a leftover, cleaned after adoption.

Trust: only the group this master made, owned by its user, is used; an
attempt cgroup is touched only if its name is one Phoenix gives and it is
owned by the master's user (a directory another user planted is refused,
never removed, never signalled)."""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import stat
from typing import Callable

from phoenix import log
from phoenix.errors import StateError
from phoenix.linux import cgroups, procfs
from phoenix.linux.cgroups import FILES, PROCS, V1, V2, Files
from phoenix.master.attempts import Attempt
from phoenix.master.metrics import Counters
from phoenix.rules.memory import (
    MASTER_LEAF,
    attempt_cgroup_name,
    attempt_of_cgroup,
    base_of,
    group_name,
    kernel_kill,
    limit_writes,
    size_text,
    v2_setup,
)
from phoenix.rules.states import KillReason

OOM_CLAIM_WINDOW = 2.0  # s: an OOM kill in the master's own cgroup explains a SIGKILL this long after it, at least
REMOVE_EVERY = 0.1  # seconds between two tries to remove an attempt's cgroup that still holds processes
REMOVE_FOR = 10.0  # then it is left, said once, for the next start's clean-up


class JobCgroups:
    def __init__(self, state_dir: str, counters: Counters, clock: Callable[[], float]) -> None:
        self.state_dir = os.path.realpath(state_dir)
        self.counters = counters
        self.clock = clock
        self.announce = True  # log the enforcer chosen (open: only if a job has a limit)
        self.files: Files | None = None  # the version in use; None: no cgroups (the watchdog enforces)
        self.group: str | None = None  # the group's directory
        self.own_dir: str | None = None  # the cgroup the master (and its unlimited children) runs in
        self.swap_accounted = False
        # The OOM kills counted in the cgroup the master's unlimited children run in, so far:
        # a SIGKILL that ends one of them while this count moves was the OOM killer's.
        self.own_events: str | None = None
        self.own_oom_kills = 0
        # The count at the last look (every OOM_CLAIM_WINDOW s): a kill counted
        # then and claimed by no death since is forgotten at the next look, so
        # that an OOM kill of some other process is not taken, minutes later,
        # for the reason an operator's `kill -9` ended a job (an outside check).
        self.own_oom_seen = 0
        self.next_oom_look: float | None = None
        self.removing: dict[str, float] = {}  # attempt cgroup -> when to stop trying to remove it
        self.next_removal: float | None = None
        self.failed_once: set[str] = set()  # causes of failed placements, logged once each

    # -- at start ---------------------------------------------------------------------

    def open(self, enabled: bool, any_limit: bool = True) -> None:
        """Choose the enforcer: v2, else v1, else none (the watchdog). Logged
        either way when a job has a limit (a master without any says nothing of
        it: its first lines stay its own, and `status` says "none"). `enabled`:
        the memory_cgroups setting. `any_limit`: a job has a limit now;
        without one, a v1 group is made only to prove it can be, and removed
        (place() makes it again, should a reload bring a limit)."""
        self.announce = any_limit
        try:
            proc_cgroup, mountinfo = cgroups.read("/proc/self/cgroup"), cgroups.read("/proc/self/mountinfo")
        except OSError as exc:
            self._none(f"/proc unreadable ({exc.strerror})")
            return
        own, mounted = cgroups.own_paths(proc_cgroup), cgroups.mounts(mountinfo)
        self._watch_own_oom_kills(own, mounted)
        if not enabled:
            self._none("memory_cgroups is false")
            return
        reasons = []
        for version in (V2, V1):
            if version not in own or version not in mounted:
                reasons.append(f"v{version}: no memory hierarchy" if version == V1 else "v2: not mounted")
                continue
            directory = cgroups.directory(*mounted[version], own[version])
            if directory is None:
                reasons.append(f"v{version}: its cgroup {own[version]} is not visible in {mounted[version][0]}")
                continue
            why = self._try(FILES[version], directory)
            if why is None:
                if self.announce:
                    log.event(logging.INFO, "memory_limits", enforcer=self.describe())
                if not any_limit and version == V1:
                    self._remove_group()  # a master of jobs without limits leaves no cgroup behind, even killed
                return
            reasons.append(f"v{version}: {why}")
        self._none("; ".join(reasons))

    def _none(self, why: str) -> None:
        self.files, self.group = None, None
        if self.announce:
            log.event(logging.INFO, "memory_limits", enforcer="watchdog", why_no_cgroup=why)

    def _try(self, files: Files, own_dir: str) -> str | None:
        """Set up the group under the master's cgroup with `files`; None if usable, else why not."""
        name = group_name(self.state_dir)
        base = base_of(own_dir, name, files.version)
        group = os.path.join(base, name)
        try:
            if not cgroups.offers_memory(base, files):
                return f"{base} offers no memory controller"
            if not os.access(base, os.W_OK) or not os.access(os.path.join(base, PROCS), os.W_OK):
                return f"{base} is not writable by this user (delegate it: docs/long-jobs.md)"
            self._make_own(group)
            if files.version == V2:
                leaf = os.path.join(group, MASTER_LEAF)
                self._make_own(leaf)
                base_subtree = cgroups.read(os.path.join(base, "cgroup.subtree_control"))
                group_subtree = cgroups.read(os.path.join(group, "cgroup.subtree_control"))
                try:
                    for path, value in v2_setup(base, name, base_subtree, group_subtree):
                        cgroups.write(path, value.replace("{pid}", str(os.getpid())))
                finally:  # moved into its leaf (even if memory could not be enabled): its children run there
                    self._count_oom_kills_in(os.path.join(leaf, files.events))
        except OSError as exc:
            return f"{exc.filename or group}: {exc.strerror or exc}"
        self.files, self.group = files, group
        self.own_dir = os.path.join(group, MASTER_LEAF) if files.version == V2 else own_dir
        self.swap_accounted = os.path.exists(os.path.join(group, files.swap_limit))
        return None

    def _make_own(self, path: str) -> None:
        """`path` made now, or there already as this user's own directory (else ForeignCgroup)."""
        try:
            os.mkdir(path, 0o755)  # only this user makes cgroups in it, whatever the umask
        except FileExistsError:
            self._check_own(path)

    @staticmethod
    def _check_own(path: str) -> None:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ForeignCgroup(errno.EPERM, "there already and not this user's alone (its owner, or others may "
                                             "write in it): Phoenix leaves it alone", path)

    def _watch_own_oom_kills(self, own: dict[int, str], mounted: dict[int, tuple[str, str]]) -> None:
        """The OOM-kill count of the memory cgroup the master's children run in
        (read-only is enough): v1's memory.oom_control, v2's memory.events(.local)."""
        for version, names in ((V1, ("memory.oom_control",)), (V2, ("memory.events.local", "memory.events"))):
            if version not in own or version not in mounted:
                continue
            directory = cgroups.directory(*mounted[version], own[version])
            for name in names:
                if directory is not None and self._count_oom_kills_in(os.path.join(directory, name)):
                    return

    def _count_oom_kills_in(self, path: str) -> bool:
        try:
            self.own_oom_kills = cgroups.counters(cgroups.read(path)).get("oom_kill", 0)
        except OSError:
            return False
        self.own_events = path
        self.own_oom_seen = self.own_oom_kills
        self.next_oom_look = self.clock() + OOM_CLAIM_WINDOW
        return True

    def describe(self) -> str:
        """What `phoenix status` says enforces max_memory (when a job has one)."""
        if self.files is None or self.group is None:
            return "watchdog"
        return f"cgroup v{self.files.version} {self.group}"

    # -- an attempt's cgroup -------------------------------------------------------------

    def place(self, attempt_id: int, pid: int, start_time: int | None, limit: int) -> str | None:
        """Make the attempt's cgroup with its limit and move its waiting child
        (`pid`, started at `start_time`) in, before the child has its order;
        None if there are no cgroups, or this one could not be made (the
        watchdog watches that attempt), or the child died waiting."""
        if self.files is None or self.group is None:
            return None
        path = os.path.join(self.group, attempt_cgroup_name(attempt_id))
        try:
            # The fork server's child is not ours to keep from being reaped: a pid is written to
            # cgroup.procs only while a pidfd shows it still names the child (it might name another
            # process once the child died and the server reaped it).
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError as exc:
            self._failed(path, exc)
            return None
        try:
            if not procfs.is_same_process(pid, start_time):
                return None  # died waiting (the pidfd names whatever has the pid now)
            self._make_own(self.group)  # (a fork-mode predecessor that exited with none running removed it)
            self._make_own(path)  # there already: an earlier image made it (an attempt id is never reused)
            for name, value in limit_writes(self.files, limit, self.swap_accounted):
                cgroups.write(os.path.join(path, name), value)
            cgroups.write(os.path.join(path, PROCS), str(pid))
            if _exited(pidfd):  # died meanwhile: what was moved in may be another process, which goes back
                self._evict(path)
                return None
        except ProcessLookupError:  # died waiting: it gets no order, and its end is recorded as such
            self._remove_now(path)
            return None
        except OSError as exc:
            self._failed(path, exc)
            if not isinstance(exc, ForeignCgroup):
                self._remove_now(path)
            return None
        finally:
            os.close(pidfd)
        return path

    def _failed(self, path: str, exc: OSError) -> None:
        error = f"{exc.filename}: {exc.strerror}" if isinstance(exc, ForeignCgroup) else exc.strerror or str(exc)
        if error not in self.failed_once:
            self.failed_once.add(error)
            log.event(logging.ERROR, "cgroup_failed", path=path, error=error,
                      effect="this attempt's memory is watched by the watchdog (said once per cause)")

    def _evict(self, path: str) -> None:
        """Move whatever is in the attempt's cgroup back to the master's own, then remove it: never killed."""
        assert self.own_dir is not None
        try:
            for pid in cgroups.processes(path):
                try:
                    cgroups.write(os.path.join(self.own_dir, PROCS), str(pid))
                except ProcessLookupError:
                    pass
            os.rmdir(path)
        except OSError as exc:
            log.event(logging.WARNING, "cgroup_left", path=path, error=exc.strerror or str(exc))

    def adopt(self, attempt: Attempt) -> None:
        """An adopted attempt keeps the cgroup an earlier master made for it."""
        if self.group is None:
            return
        path = os.path.join(self.group, attempt_cgroup_name(attempt.attempt_id))
        try:
            self._check_own(path)
        except OSError:
            return  # none (started under the watchdog), or not ours
        attempt.cgroup = path

    def ended(self, attempt: Attempt, status: int | None) -> None:
        """The attempt's process ended (`status`: its wait status, None if not
        our child). A kill by the kernel's OOM killer is named, on an attempt
        that has no other reason to have ended; its cgroup is emptied and removed."""
        unexplained = attempt.final is None and attempt.kill_reason is None and not attempt.interrupted
        if unexplained and (status is None or _killed(status)):
            if attempt.cgroup is not None:
                reason, detail = self._cgroup_kill(attempt.cgroup)
            elif status is not None:  # (an adopted child's status went to its former parent)
                reason, detail = self._own_cgroup_kill()
            else:
                reason, detail = None, None
            if reason is not None:
                attempt.kill_reason, attempt.kill_detail = reason, detail
                self.counters.count(self.counters.kills, reason)
                log.event(logging.WARNING, "kill", pid=attempt.pid, job=attempt.key, attempt=attempt.number,
                          reason=reason, by="the kernel's OOM killer")
        if attempt.cgroup is not None:
            self.remove(attempt.cgroup)

    def _cgroup_kill(self, path: str) -> tuple[KillReason | None, str | None]:
        """Read from the cgroup itself: its limit is the one it was made with (a
        reload, or the code a USR2 loaded, may give the job another since)."""
        if self.files is None:
            return None, None
        try:
            events = cgroups.counters(cgroups.read(os.path.join(path, self.files.events)))
            peak = int(cgroups.read(os.path.join(path, self.files.peak))) if self.files.peak else None
            limit = int(cgroups.read(os.path.join(path, self.files.limit)))
        except (OSError, ValueError):
            return None, None
        reason = kernel_kill(self.files, events, peak, limit)
        if reason == KillReason.MAX_MEMORY:
            return reason, (f"max_memory: the kernel's OOM killer ended it at its cgroup's {size_text(limit)} "
                            f"limit (cgroup v{self.files.version}; raise max_memory, or make the job use less)")
        if reason == KillReason.OOM:
            return reason, ("oom: the kernel's OOM killer ended it below its own limit (the host, or a cgroup "
                            "above Phoenix's, ran out of memory)")
        return None, None

    def _own_cgroup_kill(self) -> tuple[KillReason | None, str | None]:
        """A SIGKILL that ended a child running in the master's own cgroup: the
        OOM killer's if that cgroup counts one more OOM kill than explained so
        far (each count explains one end)."""
        if self.own_events is None:
            return None, None
        try:
            now = cgroups.counters(cgroups.read(self.own_events)).get("oom_kill", 0)
        except OSError:
            return None, None
        if now <= self.own_oom_kills:
            self.own_oom_kills = now
            return None, None
        self.own_oom_kills += 1
        return KillReason.OOM, (f"oom: the kernel's OOM killer ended it (one more OOM kill counted in "
                                f"{os.path.dirname(self.own_events)} than the ends already named)")

    # -- removal -------------------------------------------------------------------------

    def remove(self, path: str) -> None:
        """Kill what is left in the attempt's cgroup (its job's grandchildren) and remove it, now or soon."""
        if not self._remove_now(path):
            self.removing.setdefault(path, self.clock() + REMOVE_FOR)
            self.next_removal = self.clock() + REMOVE_EVERY

    def _remove_now(self, path: str) -> bool:
        """Empty and remove an attempt's cgroup, and first any cgroup the job
        made inside it (rmdir refuses one that has children: an outside check
        saw each such attempt's cgroup left for good). Never through a link."""
        assert self.files is not None
        try:
            for inner, _dirs, _files in sorted(os.walk(path, followlinks=False), key=lambda w: -len(w[0])):
                if cgroups.processes(inner):
                    cgroups.kill_all(inner, self.files)
                os.rmdir(inner)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # EBUSY: processes still exiting (zombies do not hold it)
        return True

    def next_deadline(self) -> float | None:
        due = [t for t in (self.next_removal, self.next_oom_look) if t is not None]
        return min(due) if due else None

    def tick(self) -> None:
        """What is due: the look at the master's own OOM count, and the
        removal of the cgroups that still held processes."""
        self._forget_unclaimed_oom_kills()
        self._remove_due()

    def _forget_unclaimed_oom_kills(self) -> None:
        if self.next_oom_look is None or self.clock() < self.next_oom_look or self.own_events is None:
            return
        self.next_oom_look = self.clock() + OOM_CLAIM_WINDOW
        self.own_oom_kills = max(self.own_oom_kills, self.own_oom_seen)  # a look ago, and still unclaimed
        try:
            self.own_oom_seen = cgroups.counters(cgroups.read(self.own_events)).get("oom_kill", 0)
        except OSError:
            pass

    def _remove_due(self) -> None:
        """Try again to remove the cgroups that still held processes."""
        if self.next_removal is None or self.clock() < self.next_removal:
            return
        now = self.clock()
        for path, give_up in list(self.removing.items()):
            if self._remove_now(path):
                del self.removing[path]
            elif now >= give_up:
                del self.removing[path]
                log.event(logging.WARNING, "cgroup_left", path=path, processes=_count(path),
                          effect="left for the next start's clean-up")
        self.next_removal = now + REMOVE_EVERY if self.removing else None

    def close(self) -> None:
        """The master exits: the cgroups of ended attempts removed if they can
        be now, and the group if it is empty (v1: a v2 group holds the master)."""
        for path in list(self.removing):
            if self._remove_now(path):
                del self.removing[path]
        if self.files is not None and self.files.version == V1:
            self._remove_group()

    def _remove_group(self) -> None:
        if self.group is not None:
            try:
                os.rmdir(self.group)
            except OSError:
                pass  # attempts left running for the next master, or still exiting: the next start cleans up

    def clean_leftovers(self, running: set[int]) -> None:
        """After adoption: the attempt cgroups of this group whose attempt does
        not run (a crashed master's, an attempt that ended while no master
        watched) are emptied and removed."""
        if self.group is None:
            return
        try:
            names = os.listdir(self.group)
        except OSError:
            return
        for name in names:
            attempt_id = attempt_of_cgroup(name)
            if attempt_id is None or attempt_id in running:
                continue
            path = os.path.join(self.group, name)
            try:
                self._check_own(path)
            except OSError:
                continue
            log.event(logging.INFO, "cgroup_leftover", path=path, processes=_count(path))
            self.remove(path)


class ForeignCgroup(StateError, PermissionError):
    """A cgroup with Phoenix's name that is not this user's (never raised out of this module)."""


def _killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _exited(pidfd: int) -> bool:
    """A pidfd is readable once its process has exited."""
    return bool(select.select([pidfd], [], [], 0)[0])


def _count(path: str) -> int | str:
    """The processes in a cgroup, for a log line ("?" if they cannot be read now)."""
    try:
        return len(cgroups.processes(path))
    except OSError:
        return "?"
