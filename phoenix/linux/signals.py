"""Signals with their sender: a signalfd, and the master as a child subreaper.

`signal.set_wakeup_fd` carries only the signal number; the master must know
who sent a stop or reload signal (a job's own process may not stop its
master), and the kernel tells that only through `siginfo`. A signalfd hands
the loop each signal's `struct signalfd_siginfo` (number, sender pid and uid,
si_code) as a readable fd. Neither the standard library nor a maintained
package wraps signalfd(2) or prctl(2), hence ctypes on libc.

The handled signals stay blocked (pthread_sigmask) for the whole life of the
master, exec included: the mask and pending signals survive an in-place exec,
so nothing sent between two images is lost or acted on by a default action.
Threads inherit the mask of the thread that creates them, so blocking before
the callback and metrics threads start leaves the signalfd the only way in.
A thread that still has them unblocked (one an app started at import, before
the master ran) would receive them through a handler instead: that handler
re-sends the signal to the main thread, where the signalfd reads it with this
process as the sender (so it is obeyed, like an operator's).
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
from typing import Any, Iterable

# The process's own symbols, libc's among them: ctypes.util.find_library would
# import subprocess, tempfile and random (an at-fork hook) into the fork server.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.signalfd.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.sigemptyset.argtypes = (ctypes.c_void_p,)
_libc.sigaddset.argtypes = (ctypes.c_void_p, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)

_SIGSET_BYTES = 128  # glibc's sigset_t (1024 bits); signalfd passes the kernel the part it uses
_SFD_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC  # SFD_NONBLOCK and SFD_CLOEXEC have the O_ flags' values
_SIGINFO_BYTES = 128  # sizeof(struct signalfd_siginfo)
# ssi_signo (u32), ssi_errno (s32), ssi_code (s32), ssi_pid (u32), ssi_uid (u32): the head of the struct.
_SIGINFO_HEAD = struct.Struct("=IiiII")
_PR_SET_CHILD_SUBREAPER = 36


def _check(result: int, what: str) -> int:
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


# glibc keeps the signals from 32 up to SIGRTMIN for itself (thread
# cancellation, setxid): its sigaction refuses them, so Python cannot see or
# reset them. glibc's posix_spawn (2.36; Python 3.13's subprocess uses it) leaves
# them ignored in the program it starts, so a master started that way would
# hand SIG_IGN on to every job. Reset here with the raw system call, by number:
_SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}.get(os.uname().machine)
_KERNEL_SIGACTION_BYTES = 32  # handler, flags, restorer, mask: zeros are SIG_DFL
_SIG_IGN = 1


def unignore_reserved_signals() -> None:
    """Set glibc's reserved signals that are ignored back to their default.
    Only ignored ones: a handler glibc installed stays (it will not install
    it again in this process)."""
    if _SYS_RT_SIGACTION is None:
        return  # another architecture: left as inherited
    for signum in range(32, signal.SIGRTMIN):
        current = ctypes.create_string_buffer(_KERNEL_SIGACTION_BYTES)
        # c_long: syscall(2) reads every argument as a long (va_arg).
        number, sig, size = ctypes.c_long(_SYS_RT_SIGACTION), ctypes.c_long(signum), ctypes.c_long(8)
        if _libc.syscall(number, sig, None, current, size) != 0:
            continue
        if int.from_bytes(current.raw[:ctypes.sizeof(ctypes.c_void_p)], "little") == _SIG_IGN:
            default = ctypes.create_string_buffer(_KERNEL_SIGACTION_BYTES)
            _libc.syscall(number, sig, default, None, size)


def set_child_subreaper() -> None:
    """Orphans among this process's descendants (a job's daemonised
    grandchild: setsid and a double fork) become its children instead of
    init's, so they can be found, ended and reaped."""
    _check(_libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def blocked_signal_fd(signals: Iterable[int]) -> int:
    """Block `signals` in this thread and return a signalfd (non-blocking,
    close-on-exec) that reads them."""
    mask = ctypes.create_string_buffer(_SIGSET_BYTES)
    _libc.sigemptyset(mask)
    for signum in signals:
        _libc.sigaddset(mask, int(signum))
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    return _check(_libc.signalfd(-1, mask, _SFD_FLAGS), "signalfd")


class SignalFD:
    """The handled signals, blocked, readable with their senders from one fd."""

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals = frozenset(signals)
        self.fd = blocked_signal_fd(self.signals)
        import threading  # here: the fork server imports this module, and must not import threading

        self._main_thread = threading.main_thread().ident
        self._pid = os.getpid()
        for signum in self.signals:
            signal.signal(signum, self._resend_to_main_thread)

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[tuple[int, int, int]]:
        """(signal number, sender pid, sender uid) of every signal waiting, in
        order. The pid is 0 when no process sent it (the kernel: a terminal's
        Ctrl-C, a child's exit)."""
        received: list[tuple[int, int, int]] = []
        while True:
            try:
                data = os.read(self.fd, _SIGINFO_BYTES * 64)
            except BlockingIOError:
                return received
            for offset in range(0, len(data) - _SIGINFO_BYTES + 1, _SIGINFO_BYTES):
                signum, _errno, code, pid, uid = _SIGINFO_HEAD.unpack_from(data, offset)
                # si_code <= 0: sent by a process (kill, sigqueue, tgkill); above: by the kernel.
                received.append((signum, pid if code <= 0 else 0, uid if code <= 0 else 0))

    def _resend_to_main_thread(self, signum: int, frame: Any) -> None:
        """A signal that reached a thread with it unblocked: the main thread
        (which blocks it) gets it again, through the signalfd. Not in a
        process forked from ours (by app code) that has not reset it: the
        thread id is the master's."""
        if self._main_thread is not None and os.getpid() == self._pid:
            signal.pthread_kill(self._main_thread, signum)

    def close(self) -> None:
        os.close(self.fd)
