"""Replacing the master with new code while its children keep running.

In place (default): preflight the new code in a throwaway process, wait for
callbacks in flight, block the handled signals (the mask and pending signals
survive exec; handlers do not, and USR2's default action would kill us), make
the heartbeat socket, control socket and pidfile-lock fds inheritable, and
exec the same command line. Same pid: the pidfile, a Procfile runner and
systemd keep working, and the children stay our children.

Fork (reexec = "fork", unicorn-style): the same preflight, then fork and exec
a new master with the same fds; the old pidfile becomes phoenix.pid.oldbin;
the new master says it is ready over a pipe and the old one exits without
touching its children, which the new one adopts through pidfds.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from phoenix import log, systemd

if TYPE_CHECKING:
    from phoenix.master import Master

FDS_VARIABLE = "PHOENIX_FDS"
GENERATION_VARIABLE = "PHOENIX_GENERATION"
READY_FD_VARIABLE = "PHOENIX_READY_FD"

# Captured at import, before any app code runs: the new image gets the
# command line, directory and environment the master was started with.
STARTUP_CWD = os.getcwd()
STARTUP_ENVIRONMENT = dict(os.environ)


def inherited_fds() -> dict[str, int]:
    """The fds handed over by the previous image: {"heartbeat": 3, ...}."""
    raw = os.environ.pop(FDS_VARIABLE, "")
    os.environ.pop(GENERATION_VARIABLE, None)
    fds = {}
    for item in filter(None, raw.split(",")):
        name, _, number = item.partition("=")
        fds[name] = int(number)
    return fds


def close_stray_fds(keep: set[int]) -> None:
    """After exec, close any fd the old image leaked beyond those handed over."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


class Handoff:
    def __init__(self, master: "Master") -> None:
        self.master = master
        self.phase = "idle"  # idle | preflight | waiting_callbacks | forked
        self.last_result: dict[str, Any] | None = None
        self.new_master_pid: int | None = None
        self.ready_read: int | None = None

    @property
    def busy(self) -> bool:
        return self.phase != "idle"

    def request_reload(self) -> dict[str, Any]:
        """`phoenix reload`: same as USR2, and answers with the generation to wait past."""
        accepted = self.begin()
        return {"ok": accepted, "generation": self.master.generation,
                "error": None if accepted else "a replacement is already in progress"}

    def begin(self) -> bool:
        m = self.master
        if self.busy:
            log.event(logging.WARNING, "reload_refused", reason="a replacement is already in progress", phase=self.phase)
            return False
        if m.app_spec is None:
            log.event(logging.WARNING, "reload_refused", reason="this master runs an app object, not an app path")
            return False
        if m.state != "running":
            log.event(logging.WARNING, "reload_refused", reason=f"the master is {m.state}")
            return False
        log.event(logging.INFO, "reload", generation=m.generation, mode=m.config.reexec)
        self.phase = "preflight"
        self.last_result = {"state": "preflight", "from_generation": m.generation}
        self.preflight_started = time.monotonic()
        argv = [sys.executable, "-m", "phoenix", "check", m.app_spec, "--state-dir", str(m.paths.root)]
        pid = os.posix_spawn(sys.executable, argv, STARTUP_ENVIRONMENT)
        m.other_children[pid] = self._preflight_done
        return True

    def _preflight_done(self, status: int) -> None:
        m = self.master
        if os.waitstatus_to_exitcode(status) != 0:
            self.phase = "idle"
            error = f"preflight `phoenix check {m.app_spec}` failed with exit code {os.waitstatus_to_exitcode(status)}; see its output above"
            self.last_result = {"state": "failed", "from_generation": m.generation, "error": error}
            log.event(logging.ERROR, "reload_failed", reason="preflight", error=error)
            return
        log.event(logging.INFO, "preflight_ok", took=f"{time.monotonic() - self.preflight_started:.2f}s")
        self.phase = "waiting_callbacks"
        self.continue_when_quiet()

    def continue_when_quiet(self) -> None:
        """Called on every turn while waiting: exec once no callback is running,
        so that none is cut off and run twice."""
        if self.phase != "waiting_callbacks" or self.master.callbacks.running:
            return
        if self.master.config.reexec == "fork":
            self.fork_new_master()
        else:
            self.exec_in_place()

    def _handover_environment(self, fds: dict[str, int]) -> dict[str, str]:
        env = dict(STARTUP_ENVIRONMENT)
        env[FDS_VARIABLE] = ",".join(f"{name}={fd}" for name, fd in fds.items())
        env[GENERATION_VARIABLE] = str(self.master.generation + 1)
        return env

    def _handover_fds(self) -> dict[str, int]:
        m = self.master
        fds = {"heartbeat": m.heartbeat.fileno(), "control": m.control.sock.fileno()}
        if m.pidfile.lock_fd is not None:
            fds["lock"] = m.pidfile.lock_fd
        for fd in fds.values():
            os.set_inheritable(fd, True)
        return fds

    def exec_in_place(self) -> None:
        m = self.master
        signal.pthread_sigmask(signal.SIG_BLOCK, _handled())
        fds = self._handover_fds()
        env = self._handover_environment(fds)
        m.journal.record_event("reexec", m.generation, os.getpid(), "inplace")
        m.journal.close()
        systemd.notify("RELOADING=1", systemd.monotonic_usec())
        log.event(logging.INFO, "exec", generation=m.generation + 1, argv=" ".join(sys.orig_argv))
        for handler in logging.getLogger().handlers:
            handler.flush()
        try:
            os.chdir(STARTUP_CWD)
            os.execve(sys.executable, sys.orig_argv, env)
        except OSError as exc:
            self._exec_failed(fds, exc)

    def _exec_failed(self, fds: dict[str, int], exc: OSError) -> None:
        from phoenix.journal import Journal

        m = self.master
        for fd in fds.values():
            os.set_inheritable(fd, False)
        m.journal = Journal(m.paths.journal)
        m.app.journal = m.journal
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _handled())
        self.phase = "idle"
        error = f"exec of {sys.executable} failed: {exc}"
        self.last_result = {"state": "failed", "from_generation": m.generation, "error": error}
        log.event(logging.ERROR, "reload_failed", reason="exec", error=error)
        systemd.notify("READY=1")

    def fork_new_master(self) -> None:
        m = self.master
        fds = self._handover_fds()
        ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
        os.set_inheritable(ready_write, True)
        env = self._handover_environment(fds)
        env[READY_FD_VARIABLE] = str(ready_write)
        os.rename(m.paths.pidfile, oldbin(m))
        try:
            pid = os.posix_spawn(sys.executable, sys.orig_argv, env)
        except OSError as exc:
            os.rename(oldbin(m), m.paths.pidfile)
            os.close(ready_read)
            os.close(ready_write)
            for fd in fds.values():
                os.set_inheritable(fd, False)
            self.phase = "idle"
            self.last_result = {"state": "failed", "from_generation": m.generation, "error": str(exc)}
            log.event(logging.ERROR, "reload_failed", reason="spawn", error=str(exc))
            return
        os.close(ready_write)
        for fd in fds.values():
            os.set_inheritable(fd, False)
        # Stop reading beats: from here on the new master owns the socket and
        # the children; the old one only waits to hear that it is ready.
        m.selector.unregister(m.heartbeat)
        self.phase = "forked"
        self.new_master_pid = pid
        self.ready_read = ready_read
        m.other_children[pid] = self._new_master_died
        m.selector.register(ready_read, selectors.EVENT_READ, self._new_master_ready)
        log.event(logging.INFO, "forked_new_master", pid=pid)

    def _new_master_ready(self) -> None:
        m = self.master
        assert self.ready_read is not None
        data = os.read(self.ready_read, 64)
        m.selector.unregister(self.ready_read)
        os.close(self.ready_read)
        self.ready_read = None
        if not data:
            return  # closed without a word: it died; _new_master_died restores
        log.event(logging.INFO, "handed_over", new_pid=self.new_master_pid, running=len(m.children))
        systemd.notify(f"MAINPID={self.new_master_pid}")
        m.leave_children_running()

    def _new_master_died(self, status: int) -> None:
        m = self.master
        if self.phase != "forked" or m.state == "stopped":
            return
        log.event(logging.ERROR, "reload_failed", reason="the new master died before it was ready",
                  status=os.waitstatus_to_exitcode(status))
        if self.ready_read is not None:
            m.selector.unregister(self.ready_read)
            os.close(self.ready_read)
            self.ready_read = None
        os.rename(oldbin(m), m.paths.pidfile)
        m.selector.register(m.heartbeat, selectors.EVENT_READ, m.read_heartbeats)
        self.phase = "idle"
        self.last_result = {"state": "failed", "from_generation": m.generation,
                            "error": "the new master died before it was ready; see its log"}

    def became_ready(self) -> None:
        """In the new image, once sockets are rebuilt, children adopted and the
        queue drained: tell systemd, the old master (fork mode), and reload --wait."""
        m = self.master
        self.last_result = {"state": "ready", "generation": m.generation}
        ready_fd = os.environ.pop(READY_FD_VARIABLE, None)
        if ready_fd is not None:
            os.write(int(ready_fd), b"ready")
            os.close(int(ready_fd))
            systemd.notify("READY=1", f"MAINPID={os.getpid()}")
        else:
            systemd.notify("READY=1")


def oldbin(m: "Master") -> Any:
    return m.paths.pidfile.with_name(m.paths.pidfile.name + ".oldbin")


def _handled() -> set[int]:
    from phoenix.master import HANDLED_SIGNALS

    return set(HANDLED_SIGNALS)
