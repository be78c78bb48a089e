"""Replacing the master with new code while its children keep running.

In place (default): preflight the new code in a throwaway process, wait for
callbacks in flight, block the handled signals (the mask and pending signals
survive exec; handlers do not, and USR2's default action would kill us), make
the listening heartbeat socket, every child's connection (named by its
pid), the control socket and the pidfile-lock fds inheritable, and exec the
same command line. Same pid: the pidfile, a Procfile runner and
systemd keep working, and the children stay our children.

Fork (reexec = "fork", unicorn-style): the same preflight, then fork and exec
a new master with the same fds (the children's connections included: both
processes hold them, only one reads; no child needs to reconnect); the old pidfile becomes phoenix.pid.oldbin;
the new master says it is ready over a pipe and the old one exits without
touching its children, which the new one adopts through pidfds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import selectors
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Protocol, Sized

from phoenix import log
from phoenix.config import Config
from phoenix.linux import pid1, pidfile, procfs, systemd
from phoenix.linux.paths import StatePaths
from phoenix.linux.pidfile import PidFile
from phoenix.linux.untrusted import visible
from phoenix.master.loop import Loop
from phoenix.master.timers import Timer
from phoenix.rules.commands import HANDLED_SIGNALS
from phoenix.rules.outcomes import classify_exit
from phoenix.rules.states import HANDOFF_TRANSITIONS, HandoffPhase, MasterState, check_move
from phoenix.store.base import Store, scrub
from phoenix.store.outage import STORAGE_ERRORS, JournalOutage
from phoenix.wire.control import ControlServer

FDS_VARIABLE = "PHOENIX_FDS"
GENERATION_VARIABLE = "PHOENIX_GENERATION"
READY_FD_VARIABLE = "PHOENIX_READY_FD"
# The old image's settings, for a new image that cannot build its own (its app
# or configuration does not load): it runs degraded on them instead of exiting.
CONFIG_VARIABLE = "PHOENIX_HANDOFF_CONFIG"
FAILED_PREFIX = b"failed:"  # on the ready pipe: a fork-mode new master that could not load the new code

HANDOFF_VARIABLES = (FDS_VARIABLE, GENERATION_VARIABLE, READY_FD_VARIABLE, CONFIG_VARIABLE)
PREFLIGHT_OUTPUT_LIMIT = 16_000  # characters of `phoenix check` output kept for the log and `reload --wait`

class Replaced(Protocol):
    """What only the master being replaced knows or does (arbiter.Master)."""

    app_spec: str | None  # None: an app object, which no new image can import
    config_file: str | None
    generation: int
    state: MasterState

    def end_spare(self) -> None: ...  # the spare runs this image's code: ended before an exec or a fork


class Links(Protocol):
    """The listening socket and the children's connections (heartbeats.HeartbeatIntake)."""

    listener: socket.socket | None

    def handover(self) -> dict[str, int]: ...
    def watch(self, selector: selectors.BaseSelector) -> None: ...
    def unwatch(self) -> None: ...
    def give_grace(self, now: float) -> None: ...


def _startup_cwd() -> str:
    """Where the new image starts: $PWD when it names the current directory,
    else the physical one. A release script switches a `current` symlink to
    the new code; the kernel knows our directory only by its resolved path
    (the old release), while $PWD keeps the path the master was started in,
    through the symlink (unicorn does the same)."""
    cwd = os.getcwd()
    pwd = os.environ.get("PWD")
    try:
        if pwd and os.path.isabs(pwd) and os.path.samefile(pwd, cwd):
            return pwd
    except OSError:
        pass
    return cwd


# Captured at import, before any app code runs: the new image gets the
# command line, directory and environment the master was started with. The
# handover variables of the image that started us are not part of it: they
# name fds of that handover, and a later one sets its own.
STARTUP_CWD = _startup_cwd()
STARTUP_ENVIRONMENT = {k: v for k, v in os.environ.items() if k not in HANDOFF_VARIABLES}


def is_replacement() -> bool:
    """True in an image started by a replacement (it inherits the old master's fds)."""
    return bool(os.environ.get(FDS_VARIABLE))


def is_fork_successor() -> bool:
    """True in a fork-mode new master (a new pid; the old master waits for its word)."""
    return is_replacement() and bool(os.environ.get(READY_FD_VARIABLE))


def handed_over_config() -> Config:
    """The settings the old image ran with (see CONFIG_VARIABLE)."""
    values = json.loads(os.environ.get(CONFIG_VARIABLE) or "{}")
    return Config(**values)


def report_failure_to_old_master(reason: str) -> None:
    """Fork mode: the new code cannot run; the old master keeps its children and carries on."""
    fd = int(os.environ[READY_FD_VARIABLE])
    try:
        os.write(fd, FAILED_PREFIX + reason.encode(errors="replace")[:PREFLIGHT_OUTPUT_LIMIT])
    except OSError:
        pass  # the old master is gone; our exit tells nobody anything more


_fork_successor = False  # set by inherited_fds(): this image is a fork-mode successor (new pid)
_handed_generation: int | None = None  # set by inherited_fds(): the generation the previous image gave this one


def handed_generation() -> int | None:
    """The generation the previous image handed this one (its own plus one),
    or None in a first start: what this image is when the journal's row for
    it is damaged, so a replacement never leaves running children unwatched."""
    return _handed_generation


FD_LIST_PREFIX = "memfd:"
# The kernel caps one environment string at 128 KiB (MAX_ARG_STRLEN); a list
# up to half of that (some 3,000 children) stays in the variable itself.
FD_LIST_IN_ENVIRONMENT = 64 * 1024


def write_fd_list(fds: dict[str, int]) -> tuple[str, int | None]:
    """The hand-over's fd list ("heartbeat=3,link.PID.N=9,...") as the value
    of FDS_VARIABLE, and the memfd that holds it when it is too long for the
    environment (None: the value is the list itself).

    The list grows with the children (about 20 bytes each): past some 6,000
    children an exec with the list in the environment failed with E2BIG, and
    no deploy was possible at all. So a long list travels in an inheritable
    memfd whose number alone is in the variable. A short one stays in the
    variable, as every earlier Phoenix wrote it, so that a rollback to a
    release that reads only that form (deploy.sh reloads the previous
    release when a new one fails) still hands its children over."""
    listing = ",".join(f"{name}={number}" for name, number in fds.items()).encode()
    if len(listing) <= FD_LIST_IN_ENVIRONMENT:
        return listing.decode(), None
    fd = os.memfd_create("phoenix-handover")
    try:
        _write_all(fd, listing)
        os.set_inheritable(fd, True)
    except OSError:
        os.close(fd)
        raise
    return f"{FD_LIST_PREFIX}{fd}", fd


def read_fd_list(value: str) -> str:
    """The fd list a previous image left (see write_fd_list); the memfd is closed."""
    if not value.startswith(FD_LIST_PREFIX):
        return value  # empty (not a replacement), or an image of a Phoenix that sent the list itself
    fd = int(value.removeprefix(FD_LIST_PREFIX))
    try:
        size = os.fstat(fd).st_size
        data = b""
        while len(data) < size:
            chunk = os.pread(fd, size - len(data), len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode()


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def inherited_fds() -> dict[str, int]:
    """The fds handed over by the previous image: {"heartbeat": 3, "link.PID.N": 9, ...}."""
    global _fork_successor, _handed_generation
    raw = read_fd_list(os.environ.pop(FDS_VARIABLE, ""))
    handed = os.environ.pop(GENERATION_VARIABLE, "")
    _handed_generation = int(handed) if raw and handed.isdigit() else None
    fds = {}
    for item in filter(None, raw.split(",")):
        name, _, number = item.partition("=")
        fds[name] = int(number)
    if fds and os.environ.get(READY_FD_VARIABLE):
        fds["ready"] = int(os.environ[READY_FD_VARIABLE])  # fork mode: kept open until became_ready uses it
        _fork_successor = True
    return fds


LINK_PREFIX = "link."


def inherited_links(fds: dict[str, int]) -> list[tuple[int, int]]:
    """(pid, fd) of each child's connection among the handed-over fds."""
    return [(int(name.split(".")[1]), fd) for name, fd in fds.items() if name.startswith(LINK_PREFIX)]


def spawn_in_startup_cwd(path: str, argv: list[str], env: dict[str, str], **options: Any) -> int:
    """posix_spawn a process (the preflight, a fork-mode master) in the startup
    directory, as it resolves *now*: after a deploy switched the symlink, that
    is the new release. This process stays where it is, on the code it runs."""
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(STARTUP_CWD)
        return os.posix_spawn(path, argv, env, **options)
    finally:
        os.fchdir(here)
        os.close(here)


def close_stray_fds(keep: set[int]) -> None:
    """After exec, close any fd the old image leaked beyond those handed over.

    Only inheritable fds can have come through exec: every fd this image
    opened itself (Python opens them close-on-exec), for instance a database
    connection the app made at import, is left alone."""
    for fd in procfs.own_fds():
        if fd in keep:
            continue
        try:
            if os.get_inheritable(fd):
                os.close(fd)
        except OSError:
            pass  # the fd of the listdir itself, gone by now


class Handoff:
    def __init__(self, master: Replaced, config: Callable[[], Config], paths: StatePaths, journal: Callable[[], Store],
                 outage: JournalOutage, loop: Loop, links: Links, control: ControlServer, pidfile: PidFile,
                 attempts: Sized, run_owed_callbacks: Callable[[], None],
                 callbacks_running: Callable[[], bool], reopen_journal: Callable[[], None],
                 leave_children_running: Callable[[], None]) -> None:
        """`journal`: the store open now (reopened after a failed exec, by
        `reopen_journal()`: storage.Storage, which owns it).
        `leave_children_running()`: fork mode, the new master is ready: exit
        without them (stopping.Stopping).
        `outage`: journal writes that failed, which a new image would not
        have. `attempts`: the running attempts (counted in the log)."""
        self.master = master
        self.config = config
        self.paths = paths
        self.journal = journal
        self.outage = outage
        self.loop = loop
        self.clock = loop.clock
        self.links = links
        self.control = control
        self.pidfile = pidfile
        self.attempts = attempts
        self.run_owed_callbacks = run_owed_callbacks
        self.callbacks_running = callbacks_running
        self.reopen_journal = reopen_journal
        self.leave_children_running = leave_children_running
        self.phase = HandoffPhase.IDLE
        self.last_result: dict[str, Any] | None = None
        self.refusal: str | None = None  # why the last reload request was refused, when not for being busy
        self.new_master_pid: int | None = None
        self.new_master_error: str | None = None  # what a fork-mode new master reported before it exited
        self.ready_read: int | None = None
        self.preflight_read: int | None = None  # the preflight's stdout and stderr
        self.preflight_output = bytearray()
        self.preflight_started = 0.0
        self.deadline = float("inf")  # monotonic: reload_timeout for the preflight or the new master
        self.helper_pid: int | None = None  # the preflight process
        self.timed_out = False
        self.paused_timers: list[Timer] = []  # fork mode: the deadlines we stop judging while the new master starts

    @property
    def busy(self) -> bool:
        return self.phase != HandoffPhase.IDLE

    def successor(self) -> int | None:
        """Fork mode: the new master's pid while it starts (it watches the children then), else None."""
        return self.new_master_pid if self.phase == HandoffPhase.FORKED else None

    def move(self, phase: HandoffPhase) -> None:
        """The one writer of `phase`."""
        self.phase = check_move(HANDOFF_TRANSITIONS, self.phase, phase)

    def request_reload(self, force: bool = False) -> dict[str, Any]:
        """`phoenix reload [--force]`: same as USR2, and answers with the generation to wait past."""
        accepted = self.begin(force)
        return {"ok": accepted, "generation": self.master.generation,
                "error": None if accepted else self.refusal or "a replacement is already in progress"}

    def begin(self, force: bool = False) -> bool:
        """Start a replacement; `force` passes the preflight's check that the
        new code has every target queued jobs use (only `phoenix reload --force`)."""
        m = self.master
        self.refusal = None
        if self.busy:
            log.event(logging.WARNING, "reload_refused", reason="a replacement is already in progress",
                      phase=self.phase)
            return False
        if m.app_spec is None:
            self.refusal = "this master runs an app object, not an app path"
            log.event(logging.WARNING, "reload_refused", reason=self.refusal)
            return False
        if m.state not in (MasterState.RUNNING, MasterState.DEGRADED):
            # (Not "a replacement is already in progress": the command says the true reason.)
            self.refusal = (f"the master is {m.state}: it is replaced only while it runs "
                            "(after a stop, start the new code)")
            log.event(logging.WARNING, "reload_refused", reason=self.refusal)
            return False
        if self.outage.active:
            # The new image would start without what this one holds in memory
            # for the journal (outcomes, callbacks done), and finished jobs would run again.
            self.refusal = (f"the journal cannot be written ({self.outage.error}): this master keeps the outcomes "
                            "it holds and replaces itself only once they are recorded; free space or fix the "
                            "state directory, then reload again")
            log.event(logging.ERROR, "reload_refused", reason=self.refusal)
            self.last_result = {"state": "failed", "from_generation": m.generation, "error": self.refusal}
            return False
        config = self.config()
        if config.reexec == "fork" and pid1.is_namespace_init():
            log.event(logging.ERROR, "reload_refused", reason=pid1.FORK_REPLACEMENT_REFUSED)
            # What `phoenix reload --wait` reads: it exits 1 with this reason.
            self.refusal = pid1.FORK_REPLACEMENT_REFUSED
            self.last_result = {"state": "failed", "from_generation": m.generation, "error": self.refusal}
            return False
        log.event(logging.INFO, "reload", generation=m.generation, mode=config.reexec)
        self.move(HandoffPhase.PREFLIGHT)
        self.last_result = {"state": "preflight", "from_generation": m.generation}
        self.preflight_started = self.clock.monotonic()
        argv = [sys.executable, "-m", "phoenix", "check", m.app_spec, "--state-dir", str(self.paths.root)]
        if m.config_file:
            argv += ["--config", m.config_file]
        environment = STARTUP_ENVIRONMENT
        if self.journal().shared:  # its queue is the shared store's; named in its environment, not its argv,
            # which every user reads in /proc (and the refusal below quotes): the URL may hold a password
            environment = {**STARTUP_ENVIRONMENT, "PHOENIX_STORE": config.store}
        if force:
            argv.append("--force")
            log.event(logging.WARNING, "reload_forced",
                      effect="jobs whose target the new code lacks fail when they start")
        self.deadline = self.clock.monotonic() + config.reload_timeout
        # Its output (the error and traceback, if the new code is broken) comes
        # back to us through a pipe: it goes into our log and into the answer
        # `phoenix reload --wait` prints, wherever our own stderr points.
        try:
            output_read, output_write = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:  # out of descriptors: this image carries on, and says why
            self._failed("preflight", f"cannot start the preflight: {exc.strerror or exc}")
            return True
        os.set_blocking(output_read, False)
        try:
            pid = spawn_in_startup_cwd(sys.executable, argv, environment, setsigmask=(), file_actions=[
                (os.POSIX_SPAWN_DUP2, output_write, 1), (os.POSIX_SPAWN_DUP2, output_write, 2)])
        except OSError as exc:
            os.close(output_read)
            self._failed("preflight", f"cannot start the preflight `{' '.join(argv)}`: {exc}")
            return True
        finally:
            os.close(output_write)
        self.preflight_output = bytearray()
        self.preflight_read = output_read
        self.loop.watch(output_read, self._read_preflight_output)
        self.loop.subprocesses[pid] = self._preflight_done
        self.helper_pid = pid
        return True

    def enforce_deadline(self) -> None:
        """A preflight or a fork-mode new master that hangs must not block
        every later deploy: past reload_timeout it is killed (it is our own
        child, so its pid cannot have been reused) and the reload fails."""
        if self.phase not in ("preflight", "forked") or self.clock.monotonic() < self.deadline:
            return
        pid = self.helper_pid if self.phase == "preflight" else self.new_master_pid
        what = "preflight" if self.phase == "preflight" else "new master"
        log.event(logging.ERROR, "reload_timeout", waited_for=what, pid=pid,
                  limit=f"{self.config().reload_timeout}s")
        self.timed_out = True
        self.deadline = float("inf")
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _read_preflight_output(self) -> None:
        if self.preflight_read is None:
            return
        try:
            while chunk := os.read(self.preflight_read, 65536):
                self.preflight_output += chunk
                if len(self.preflight_output) > 4 * PREFLIGHT_OUTPUT_LIMIT:  # keep the head and the end
                    del self.preflight_output[PREFLIGHT_OUTPUT_LIMIT // 4 : -PREFLIGHT_OUTPUT_LIMIT]
        except BlockingIOError:
            return
        self._stop_reading_preflight()

    def _stop_reading_preflight(self) -> None:
        if self.preflight_read is not None:
            self.loop.unwatch(self.preflight_read)
            os.close(self.preflight_read)
            self.preflight_read = None

    def _preflight_done(self, status: int) -> None:
        m = self.master
        self._read_preflight_output()  # it has exited: the rest is in the pipe
        self._stop_reading_preflight()  # if a process it started still holds the pipe
        code = os.waitstatus_to_exitcode(status)
        if self.timed_out:
            self.timed_out = False
            self._failed("preflight", f"preflight `phoenix check {m.app_spec}` did not finish within "
                         f"{self.config().reload_timeout} s (reload_timeout); it was killed")
            return
        if code != 0:
            # Its own "phoenix: error: " prefix goes: `reload --wait` and the log add theirs.
            output = _cut(self.preflight_output.decode(errors="replace").strip().removeprefix("phoenix: error: "),
                          PREFLIGHT_OUTPUT_LIMIT)
            self._failed("preflight", f"preflight `phoenix check {m.app_spec}` failed with exit code {code}:\n"
                         f"{output or '(no output)'}")
            return
        log.event(logging.INFO, "preflight_ok", took=f"{self.clock.monotonic() - self.preflight_started:.2f}s")
        self.move(HandoffPhase.WAITING_CALLBACKS)
        self.continue_when_quiet()

    def _failed(self, reason: str, error: str) -> None:
        """The replacement did not happen: this image carries on, as if it had
        never been asked (and runs the callbacks that were held back for it)."""
        m = self.master
        self.move(HandoffPhase.IDLE)
        self.last_result = {"state": "failed", "from_generation": m.generation, "error": error}
        log.event(logging.ERROR, "reload_failed", reason=reason, error=error)  # one record, the whole reason
        self.run_owed_callbacks()

    def continue_when_quiet(self) -> None:
        """Called on every turn while waiting: exec once no callback is running,
        so that none is cut off and run twice."""
        if self.phase != "waiting_callbacks" or self.callbacks_running():
            return
        if self.outage.active:  # it began after the reload did (see begin)
            self._failed("journal", f"the journal cannot be written ({self.outage.error}): this master "
                                    "keeps the outcomes it holds; reload again once it is writable")
            return
        if self.config().reexec == "fork":
            self.fork_new_master()
        else:
            self.exec_in_place()

    def _handover_environment(self, fd_list: str) -> dict[str, str]:
        env = dict(STARTUP_ENVIRONMENT)
        env[FDS_VARIABLE] = fd_list
        env[GENERATION_VARIABLE] = str(self.master.generation + 1)
        env[CONFIG_VARIABLE] = json.dumps(dataclasses.asdict(self.config()))
        return env

    def _handover_fds(self) -> dict[str, int]:
        assert self.links.listener is not None  # listening from open() on
        fds = {"heartbeat": self.links.listener.fileno(), "control": self.control.sock.fileno()}
        if self.pidfile.lock_fd is not None:
            fds["lock"] = self.pidfile.lock_fd
        fds.update(self.links.handover())
        for fd in fds.values():
            os.set_inheritable(fd, True)
        return fds

    def _answer_accepted_requests(self) -> bool:
        """Before exec: answer the control requests already accepted (a
        `reload --wait` polling status, say), whose connections the exec would
        close under the client's feet. New connections wait in the listen
        backlog, which the new image inherits with the socket. False when one
        of them was a stop: then the master stops instead of replacing itself."""
        self.control.stop_listening()
        self.control.answer_accepted(within=0.5)
        self.control.close()  # whatever is left never sent a whole request
        if self.master.state not in (MasterState.RUNNING, MasterState.DEGRADED):
            self.control.listen_again()
            self._failed("stop", f"the master is {self.master.state}: a stop request came in before the exec")
            return False
        return True

    def exec_in_place(self) -> None:
        m = self.master
        try:  # first: out of descriptors, nothing has been undone yet and this image carries on
            here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            self._failed("exec", f"cannot exec: {exc.strerror or exc}")
            return
        if not self._answer_accepted_requests():
            os.close(here)
            return
        m.end_spare()  # it runs this image's code; ended and reaped now, not left to the new image
        signal.pthread_sigmask(signal.SIG_BLOCK, _handled())
        fds = self._handover_fds()
        try:
            fd_list, fd_list_memfd = write_fd_list(fds)
        except OSError as exc:  # no memory for the list: nothing is closed yet, this image carries on
            for fd in fds.values():
                os.set_inheritable(fd, False)
            self.control.listen_again()
            os.close(here)
            self._failed("exec", f"cannot hand over: {exc.strerror or exc}")
            return
        env = self._handover_environment(fd_list)
        journal = self.journal()
        try:
            journal.record_event("reexec", m.generation, os.getpid(), "inplace")
        except STORAGE_ERRORS as exc:  # the disk filled this instant: nothing is held (see begin), only history lost
            log.event(logging.WARNING, "reexec_unrecorded", error=str(exc))
        journal.close()
        systemd.notify("RELOADING=1", systemd.monotonic_usec())
        log.event(logging.INFO, "exec", generation=m.generation + 1,
                  argv=scrub(" ".join(sys.orig_argv), self.config().store))  # a --store URL's password: not logged
        for handler in logging.getLogger().handlers:
            handler.flush()
        for stream in (sys.stdout, sys.stderr):  # what the app printed, still in Python's buffers
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        try:
            os.chdir(STARTUP_CWD)  # through a `current` symlink: into the new release
            os.execve(sys.executable, sys.orig_argv, env)
        except OSError as exc:
            os.fchdir(here)
            _close(fd_list_memfd)
            self._exec_failed(fds, exc)
        finally:
            os.close(here)

    def _exec_failed(self, fds: dict[str, int], exc: OSError) -> None:
        for fd in fds.values():
            os.set_inheritable(fd, False)
        self.reopen_journal()
        self.control.listen_again()
        systemd.notify("READY=1")
        self._failed("exec", f"exec of {sys.executable} failed: {exc}")

    def fork_new_master(self) -> None:
        m = self.master
        m.end_spare()  # it runs this image's code
        try:
            ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:  # out of descriptors: this image carries on, and says why
            self._failed("spawn", f"cannot start the new master: {exc.strerror or exc}")
            return
        fds = self._handover_fds()
        try:
            fd_list, fd_list_memfd = write_fd_list(fds)
        except OSError as exc:  # no memory for the list: this image carries on, and says why
            os.close(ready_read)
            os.close(ready_write)
            for fd in fds.values():
                os.set_inheritable(fd, False)
            self._failed("spawn", f"cannot hand over: {exc.strerror or exc}")
            return
        os.set_inheritable(ready_write, True)
        env = self._handover_environment(fd_list)
        env[READY_FD_VARIABLE] = str(ready_write)
        # systemd's WATCHDOG_PID names us; the new master, once MAINPID, owes the keep-alives.
        env.pop("WATCHDOG_PID", None)
        systemd.notify("RELOADING=1", systemd.monotonic_usec())
        os.rename(self.paths.pidfile, oldbin(self.paths))
        try:
            # Started with the handled signals blocked, as an in-place image is:
            # a USR2 or TERM that reaches it before its handlers are installed
            # waits for them instead of killing it.
            pid = spawn_in_startup_cwd(sys.executable, sys.orig_argv, env, setsigmask=_handled())
        except OSError as exc:
            _close(fd_list_memfd)
            os.rename(oldbin(self.paths), self.paths.pidfile)
            os.close(ready_read)
            os.close(ready_write)
            for fd in fds.values():
                os.set_inheritable(fd, False)
            systemd.notify("READY=1")
            self._failed("spawn", f"cannot start the new master: {exc}")
            return
        os.close(ready_write)
        _close(fd_list_memfd)  # the new master has its own copy
        for fd in fds.values():
            os.set_inheritable(fd, False)
        # Stop reading beats and control requests: from here on the new master
        # owns the socket and the children (it adopts them through pidfds) and
        # answers `phoenix status`; the old one only waits to hear that it is
        # ready, and does not judge its children by beats it no longer reads.
        self.links.unwatch()
        self.control.stop_listening()
        self.paused_timers = self.loop.timers.pause()
        self.move(HandoffPhase.FORKED)
        self.deadline = self.clock.monotonic() + self.config().reload_timeout
        self.new_master_pid = pid
        self.ready_read = ready_read
        self.loop.subprocesses[pid] = self._new_master_died
        self.loop.watch(ready_read, self._new_master_ready)
        log.event(logging.INFO, "forked_new_master", pid=pid)

    def _new_master_ready(self) -> None:
        assert self.ready_read is not None
        data = os.read(self.ready_read, PREFLIGHT_OUTPUT_LIMIT + len(FAILED_PREFIX))
        self._close_ready_pipe()
        if data.startswith(FAILED_PREFIX):
            self.new_master_error = data[len(FAILED_PREFIX):].decode(errors="replace")
            return  # it exits now; _new_master_died restores
        if not data:
            return  # closed without a word: it died; _new_master_died restores
        log.event(logging.INFO, "handed_over", new_pid=self.new_master_pid, running=len(self.attempts))
        # From the main pid (NotifyAccess=main): the service's main process is now the new master.
        systemd.notify(f"MAINPID={self.new_master_pid}", "READY=1")
        self.leave_children_running()

    def _new_master_died(self, status: int) -> None:
        m = self.master
        if self.phase != "forked" or m.state == "stopped":
            return
        self._close_ready_pipe()
        try:
            os.rename(oldbin(self.paths), self.paths.pidfile)
        except FileNotFoundError:
            pidfile.write_atomically(self.paths.pidfile, os.getpid())
        self.links.watch(self.loop.selector)
        self.control.listen_again()
        # The beats sent while we did not listen were read by the new master,
        # or are still queued: every child gets a full heartbeat_timeout again.
        self.links.give_grace(self.clock.monotonic())
        self.loop.timers.resume(self.paused_timers)
        self.paused_timers = []
        systemd.notify("READY=1")
        if self.timed_out:
            self.timed_out = False
            self._failed("new master", f"the new master (pid {self.new_master_pid}) was not ready within "
                         f"{self.config().reload_timeout} s (reload_timeout) and was killed")
            return
        if self.new_master_error is not None:
            error, self.new_master_error = self.new_master_error, None
            self._failed("new master", f"the new master (pid {self.new_master_pid}) could not load the new "
                         f"code: {error}")
            return
        self._failed("new master", f"the new master (pid {self.new_master_pid}) exited with "
                     f"{classify_exit(status)[1]} before it was ready; see its output in the log")

    def _close_ready_pipe(self) -> None:
        if self.ready_read is not None:
            self.loop.unwatch(self.ready_read)
            os.close(self.ready_read)
            self.ready_read = None

    def became_degraded(self, reason: str) -> None:
        """In a new image that could not load the new code: it holds the pid
        and watches the children; `reload --wait` and systemd hear why."""
        m = self.master
        self.last_result = {"state": "failed", "from_generation": m.generation - 1, "error": reason}
        systemd.notify("READY=1", f"STATUS=degraded: {visible(reason.splitlines()[0][:200]) if reason else ''}")

    def became_ready(self) -> None:
        """In the new image, once sockets are rebuilt, children adopted and the
        queue drained: tell systemd, the old master (fork mode), and reload --wait."""
        m = self.master
        self.last_result = {"state": "ready", "generation": m.generation}
        ready_fd = os.environ.pop(READY_FD_VARIABLE, None)
        if ready_fd is not None:  # the old master (fork mode) or the `start --daemon` launcher waits for it
            try:
                os.write(int(ready_fd), b"ready")
            except OSError:
                pass  # nobody waits any more (the old master was killed): we are in charge all the same
            os.close(int(ready_fd))
        if _fork_successor:
            # Not systemd's main pid yet: the old master, which is, sends
            # MAINPID=<us> and READY=1 once it reads the pipe (NotifyAccess=main).
            return
        if ready_fd is not None:  # a daemon: the launcher systemd started has exited by now
            systemd.notify("READY=1", f"MAINPID={os.getpid()}")
        else:
            systemd.notify("READY=1")


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit // 4] + "\n[... cut ...]\n" + text[-(limit - limit // 4):]


def oldbin(paths: StatePaths) -> Path:
    """Fork mode: where the old master's pidfile goes while the new master starts."""
    return paths.pidfile.with_name(paths.pidfile.name + ".oldbin")


def _handled() -> set[int]:
    return set(HANDLED_SIGNALS)
