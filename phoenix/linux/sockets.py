"""Binding the state directory's Unix sockets safely."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from phoenix.errors import StateError
from phoenix.linux.paths import unix_address


class SocketBusy(StateError, OSError):
    """Another live process is bound to one of our socket paths."""


def _in_use(path: Path, kind: int) -> bool:
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        with unix_address(path) as address:
            probe.connect(address)
        return True
    except OSError as exc:
        # ECONNREFUSED: nobody is bound there any more (a dead master's file).
        # EPROTOTYPE: a live socket of the other type is bound there: taken too.
        return exc.errno == errno.EPROTOTYPE
    finally:
        probe.close()


def bind_private(sock: socket.socket, path: Path) -> None:
    """Bind at `path`, mode 0600. Only a master that holds the pidfile lock gets
    here, so a socket file left at the path is a dead master's and is removed;
    one that still answers belongs to some other live process, and we refuse."""
    if path.exists() or path.is_symlink():
        if _in_use(path, sock.type):
            raise SocketBusy(
                f"{path} is held by another live process, not a Phoenix master of this state directory; "
                "stop that process or choose another --state-dir"
            )
        path.unlink()
    old_umask = os.umask(0o177)  # created 0600, with no window at a wider mode
    try:
        with unix_address(path) as address:
            sock.bind(address)
    finally:
        os.umask(old_umask)


# Connections waiting to be accepted (the kernel caps it at net.core.somaxconn):
# after a crash, every running child reconnects within a fraction of a second.
LISTEN_BACKLOG = 4096


def bind_heartbeat(path: Path) -> socket.socket:
    """The listening socket children connect to, one SOCK_SEQPACKET connection
    each: every connection has its own queue, bounded by the child's send
    buffer, not the shared datagram count of net.unix.max_dgram_qlen."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    bind_private(sock, path)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock
