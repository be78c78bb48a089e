"""A directory is trusted only if it is ours (FAULTS.md, class 3). Root (the
tests run as root in CI) pointed at a directory that another user owns or can
write: every command refuses it with one line, before it writes, links or
runs anything there; links planted at the names Phoenix writes are never
followed; the control socket is asked nothing unless its server runs as this
user (or root), and a malformed answer is one error line; the modes of what
Phoenix creates do not depend on the umask."""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from phoenix.child import run as child
from phoenix.linux import pidfile
from phoenix.store import sqlite as journal
from phoenix.store.sqlite import Journal
from tests.conftest import PYTHON, phoenix_cli, wait_for

SLEEP = "tests.apps.jobs:sleep"
VICTIM_TEXT = "root's file, which no state directory may touch\n"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to act as root beside the user nobody")


def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def as_nobody(action: Callable[[], Any]) -> None:
    """Run `action` in a forked process of the user nobody; fail if it raises."""
    entry = nobody()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            action()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the action as nobody failed"


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory in /tmp that nobody can reach (pytest's tmp_path parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="phoenix-hostile-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victim(base: Path) -> Path:
    """A file of root's elsewhere, that planted links point at."""
    path = base / "victim"
    path.write_text(VICTIM_TEXT)
    return path


def one_error_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("phoenix: error: "), result.stderr
    return str(lines[0])


# Every command that takes --state-dir: none may act on a hostile directory.
COMMANDS: list[tuple[str, ...]] = [
    ("start", "tests.apps.jobs:app", "--exit-when-done"), ("submit", SLEEP, '{"s": 0}', "--key", "rooted"),
    ("status",), ("stop",), ("reload",), ("jobs",), ("show", "queued-by-nobody"), ("retry", "queued-by-nobody"),
    ("cancel", "queued-by-nobody"), ("prune", "--finished-before", "1s"), ("check", "tests.apps.jobs:app"),
]


def test_a_state_directory_of_another_user_is_refused_by_every_command(base: Path, victim: Path) -> None:
    """The issue's case: nobody's /tmp directory, mode 0777, with links
    planted at the names Phoenix writes and a job queued by nobody. Old code:
    root truncated the victim through the links and ran nobody's job."""
    hostile = base / "nobodys"
    hostile.mkdir()
    hostile.chmod(0o777)
    os.chown(hostile, nobody().pw_uid, nobody().pw_gid)

    def plant() -> None:
        with Journal(hostile / "journal.db") as queued:
            queued.submit("tests.apps.jobs:noop", "{}", "queued-by-nobody")
        for name in ("phoenix.lock", "phoenix.pid"):
            os.symlink(victim, hostile / name)

    def still_pending() -> None:
        with Journal(hostile / "journal.db", create=False) as queued:
            assert queued.counts()["pending"] == 1 and queued.counts()["finished"] == 0

    as_nobody(plant)
    before = sorted(os.listdir(hostile))
    for command in COMMANDS:
        result = phoenix_cli(*command, state_dir=hostile, timeout=30)
        assert result.returncode == 2, (command, result.returncode, result.stdout, result.stderr)
        line = one_error_line(result)
        assert "belongs to nobody" in line and str(hostile) in line, line
    assert victim.read_text() == VICTIM_TEXT
    assert sorted(os.listdir(hostile)) == before  # nothing created, removed or replaced there
    as_nobody(still_pending)  # root ran nothing nobody queued


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o1777])
def test_a_state_directory_others_can_write_is_refused(base: Path, mode: int) -> None:
    state = base / "open"
    state.mkdir()
    state.chmod(mode)
    result = phoenix_cli("submit", SLEEP, '{"s": 0}', state_dir=state)
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"mode {mode:04o}" in line and "chmod go-w" in line, line
    assert os.listdir(state) == []  # no journal, no job


def test_a_state_directory_another_user_could_swap_is_refused(base: Path) -> None:
    """Root's own 0700 directory, but under a directory of nobody's, or
    reached through nobody's link in the sticky /tmp: nobody could replace
    it (or the link) with one of theirs after the check."""
    nobodys_parent = base / "nobodys-parent"
    nobodys_parent.mkdir(mode=0o755)
    os.chown(nobodys_parent, nobody().pw_uid, nobody().pw_gid)
    under = nobodys_parent / "state"
    under.mkdir(mode=0o700)
    result = phoenix_cli("submit", SLEEP, '{"s": 0}', state_dir=under)
    assert result.returncode == 2
    assert "lies under" in one_error_line(result) and "belongs to nobody" in result.stderr

    world_parent = base / "world"
    world_parent.mkdir()
    world_parent.chmod(0o777)  # writable by all, not sticky
    result = phoenix_cli("submit", SLEEP, '{"s": 0}', state_dir=world_parent / "state")
    assert result.returncode == 2 and "anyone can write" in one_error_line(result)
    assert not (world_parent / "state").exists()

    real = base / "real-state"
    real.mkdir(mode=0o700)
    link = Path(tempfile.gettempdir()) / f"phoenix-link-{os.getpid()}"
    as_nobody(lambda: os.symlink(real, link))
    try:
        result = phoenix_cli("submit", SLEEP, '{"s": 0}', state_dir=link)
        assert result.returncode == 2 and "symbolic link" in one_error_line(result)
        assert os.listdir(real) == []
    finally:
        link.unlink()
    # The same link of root's own is followed: the directory it leads to is ours.
    os.symlink(real, link)
    try:
        result = phoenix_cli("submit", SLEEP, '{"s": 0}', "--key", "through-a-link", state_dir=link)
        assert result.returncode == 0, result.stderr
        assert (real / "journal.db").exists()
    finally:
        link.unlink()


def test_links_in_our_own_directory_are_refused_not_followed(base: Path, victim: Path) -> None:
    state = base / "state"
    state.mkdir(mode=0o700)
    for name in ("phoenix.lock", "journal.db", "phoenix.pid", "control.sock", "output", "quarantine"):
        os.symlink(victim, state / name)
        result = phoenix_cli("start", "tests.apps.jobs:app", "--exit-when-done", state_dir=state)
        assert result.returncode == 2 and "symbolic link" in one_error_line(result), result.stderr
        (state / name).unlink()
    assert victim.read_text() == VICTIM_TEXT


@pytest.mark.parametrize("name", ["journal.db", "phoenix.lock", "phoenix.pid", "outbox", "control.sock"])
def test_a_state_file_of_another_kind_is_refused_not_waited_on(base: Path, name: str) -> None:
    """A FIFO at a state file's name: a read of it hung every command (status,
    submit, jobs, start, stop) until killed; a file where a directory or a
    socket belongs is refused alike."""
    state = base / "state"
    state.mkdir(mode=0o700)
    os.mkfifo(state / name, 0o600)
    for args in (("status",), ("submit", "tests.apps.jobs:noop", "{}"), ("start", "tests.apps.jobs:app")):
        result = phoenix_cli(*args, state_dir=state)
        assert result.returncode == 2 and "is not a" in one_error_line(result), (args, result.stderr)


def test_a_report_another_user_could_redirect_is_refused(base: Path, victim: Path) -> None:
    """`phoenix report --html` at nobody's link in a directory anyone can write: old code wrote root's
    timeline (jobs' parameters, errors) over the victim; a new report is 0600 whatever the umask."""
    state = base / "state"
    assert phoenix_cli("submit", "tests.apps.jobs:noop", "{}", state_dir=state).returncode == 0
    hostile = base / "public"
    hostile.mkdir()
    hostile.chmod(0o777)
    as_nobody(lambda: os.symlink(victim, hostile / "report.html"))
    result = phoenix_cli("report", "--html", str(hostile / "report.html"), state_dir=state)
    assert result.returncode == 2 and "the report" in one_error_line(result), result.stderr
    assert victim.read_text() == VICTIM_TEXT
    mine = base / "mine.html"
    made = subprocess.run(["sh", "-c", 'umask 000 && exec "$0" "$@"', PYTHON, "-m", "phoenix", "report", "--html",
                           str(mine), "--state-dir", str(state)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600


def test_a_log_file_another_user_could_redirect_is_refused(base: Path, victim: Path) -> None:
    """--log-file in nobody's directory, or at nobody's link in the sticky
    /tmp: old code appended root's log to the victim through the link."""
    hostile = base / "nobodys-logs"
    hostile.mkdir()
    hostile.chmod(0o777)
    os.chown(hostile, nobody().pw_uid, nobody().pw_gid)
    in_tmp = Path(tempfile.gettempdir()) / f"phoenix-{os.getpid()}.log"

    def plant() -> None:
        os.symlink(victim, hostile / "phoenix.log")
        os.symlink(victim, in_tmp)

    as_nobody(plant)
    try:
        for log_file, said in ((hostile / "phoenix.log", "belongs to nobody"), (in_tmp, "symbolic link")):
            result = phoenix_cli("start", "tests.apps.jobs:app", "--exit-when-done", "--log-file", str(log_file),
                                 state_dir=base / "state")
            assert result.returncode == 2, (log_file, result.stdout, result.stderr)
            line = one_error_line(result)
            assert said in line and "the log file" in line, line
    finally:
        in_tmp.unlink()
    assert victim.read_text() == VICTIM_TEXT


def test_temporary_names_are_unpredictable_and_never_followed(base: Path, victim: Path) -> None:
    """Links at the old predictable temporary names of the pidfile, the
    journal and the outbox: each write goes to a file of its own, the victim
    is untouched. (Old code opened those names with O_TRUNC, through the link.)"""
    state = base / "state"
    (state / "outbox").mkdir(parents=True, mode=0o700)
    planted = [state / f".phoenix.pid.{os.getpid()}.tmp", state / f"journal.db.creating-{os.getpid()}",
               state / "outbox" / f".7.1.{os.getpid()}.tmp"]
    for path in planted:
        os.symlink(victim, path)
    pidfile.write_atomically(state / "phoenix.pid", 4242)
    assert (state / "phoenix.pid").read_text() == "4242\n"
    assert stat.S_IMODE(os.lstat(state / "phoenix.pid").st_mode) == 0o644
    with Journal(state / "journal.db") as made:
        assert made.counts() is not None
    child._write_outbox(state / "outbox", 7, 1, b'{"kind": "finished"}')
    assert (state / "outbox" / "7.1.json").read_bytes() == b'{"kind": "finished"}'
    assert victim.read_text() == VICTIM_TEXT
    assert all(path.is_symlink() for path in planted[:2])  # left as they were: never opened
    assert not journal._orphan_wal(state / "journal.db")


def test_a_lock_file_link_is_not_followed(base: Path) -> None:
    """Old code created (O_CREAT) and locked the link's target, anywhere."""
    state = base / "state"
    state.mkdir(mode=0o700)
    os.symlink(base / "created-through-the-link", state / "phoenix.lock")
    lock = pidfile.PidFile(state / "phoenix.pid", state / "phoenix.lock")
    with pytest.raises(OSError):
        lock.acquire()
    assert not (base / "created-through-the-link").exists()
    assert not (state / "phoenix.pid").exists()


# -- the control socket's server, and its answers ----------------------------------------


class FakeServer:
    """A stream socket at `path` that records what it receives and answers
    each request with `reply`, served by this process (root) or bound by
    nobody (SO_PEERCRED names the process that called listen())."""

    def __init__(self, path: Path, reply: bytes, by_nobody: bool = False) -> None:
        self.received: list[bytes] = []
        self.reply = reply
        if by_nobody:
            self.sock = self._listening_as_nobody(path)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(str(path))
            self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _listening_as_nobody(path: Path) -> socket.socket:
        """Bind and listen in a process of nobody's, in a directory it can
        write, hand the socket back over a socketpair, then move its path into
        place (as only root could: the state directory is root's)."""
        scratch = Path(tempfile.mkdtemp(prefix="phoenix-impostor-"))
        scratch.chmod(0o777)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def bind_and_pass() -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(scratch / "sock"))
            sock.listen(8)
            socket.send_fds(theirs, [b"x"], [sock.fileno()])

        as_nobody(bind_and_pass)
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        ours.close()
        theirs.close()
        os.rename(scratch / "sock", path)
        os.chown(path, 0, 0)  # the file root's too: only the listening process is nobody's (SO_PEERCRED)
        shutil.rmtree(scratch)
        return socket.socket(fileno=fds[0])

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                data = b""
                try:
                    while not data.endswith(b"\n"):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if data:  # a connect alone tells the server nothing
                        self.received.append(data)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def held_state(base: Path) -> Iterator[Path]:
    """Root's own state directory whose lock is held (by this process) and
    whose pidfile names this process: what a live master's looks like."""
    state = base / "state"
    state.mkdir(mode=0o700)
    with Journal(state / "journal.db") as made:
        made.submit(SLEEP, '{"s": 0}', "a-job")
    fd = os.open(state / "phoenix.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    (state / "phoenix.pid").write_text(f"{os.getpid()}\n")
    yield state
    os.close(fd)


def test_a_control_socket_served_by_another_user_is_sent_nothing(held_state: Path) -> None:
    """Old code sent root's `stop` to whoever listened at control.sock."""
    server = FakeServer(held_state / "control.sock", b'{"ok": true, "generation": 1}\n', by_nobody=True)
    try:
        for command in (("stop",), ("status",), ("reload",), ("cancel", "a-job")):
            result = phoenix_cli(*command, state_dir=held_state, timeout=30)
            assert result.returncode == 1, (command, result.stdout, result.stderr)
            line = one_error_line(result)
            assert f"uid {nobody().pw_uid}" in line and "nothing was sent" in line, line
        assert server.received == []
    finally:
        server.close()


STATUS = {"pid": 1, "generation": 2, "state": "running", "uptime": 1.0}
MALFORMED = [  # (the reply, the commands that must each say one error line for it)
    (b'{"ok": true}\n', [("status",), ("status", "--json"), ("reload",), ("cancel", "a-job")]),
    (b'[1, 2, 3]\n', [("status",), ("reload",), ("cancel", "a-job"), ("stop",)]),
    (b'{"ok": true, "generation": "7", "master": [], "cancelled": 3}\n',
     [("status",), ("reload",), ("cancel", "a-job")]),
    (json.dumps({"ok": True, "generation": 2, "master": STATUS, "running": {"1": {"pid": "x"}}}).encode() + b"\n",
     [("status",), ("status", "--json")]),
    (json.dumps({"ok": True, "generation": 2, "master": {**STATUS, "generation": None}}).encode() + b"\n",
     [("status",), ("reload", "--wait")]),
    (b'{"ok": false, "error": {"nested": true}}\n', [("status",), ("reload",), ("cancel", "a-job")]),
    (b'{"ok": true, "a": ' + b"[" * 100_000 + b"\n", [("status",), ("reload",), ("cancel", "a-job")]),
]


@pytest.mark.parametrize(("reply", "commands"), MALFORMED)
def test_a_malformed_answer_is_one_error_line(held_state: Path, reply: bytes, commands: list[tuple[str, ...]]) -> None:
    """A server of this user that answers in another shape (an older master,
    a stray program): one line each, exit 1, never a KeyError traceback."""
    server = FakeServer(held_state / "control.sock", reply)
    try:
        for command in commands:
            result = phoenix_cli(*command, state_dir=held_state, timeout=30)
            assert result.returncode == 1, (command, result.stdout, result.stderr)
            one_error_line(result)
    finally:
        server.close()


# -- modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", ["000", "277"])
def test_modes_do_not_follow_the_umask(master_factory, state_dir: Path, tmp_path: Path, umask: str) -> None:
    """Under umask 000 old code made the pidfile and --log-file 0666, parents
    0777; under 0277 a state directory it could not write (0500)."""
    deep = tmp_path / "made" / "by" / "phoenix"
    log_file = tmp_path / "logs-master.log"
    launcher = ("sh", "-c", f'umask {umask} && exec "$0" "$@"', PYTHON, "-m", "phoenix")
    master = master_factory("--log-file", str(log_file), launcher=launcher, state=deep / "state", start=False)
    master.start(wait_ready=False)
    wait_for(lambda: log_file.exists() and "ready generation=" in log_file.read_text(), what="the master to be ready")
    result = phoenix_cli("submit", SLEEP, '{"s": 0}', "--key", "one", state_dir=deep / "state")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: master.counts().get("finished") == 1, what="the job to finish under this umask")
    state = deep / "state"
    modes = {name: stat.S_IMODE(os.lstat(state / name).st_mode)
             for name in (".", "outbox", "journal.db", "phoenix.pid", "phoenix.lock", "phoenix.sock", "control.sock")}
    assert modes == {".": 0o700, "outbox": 0o700, "journal.db": 0o600, "phoenix.pid": 0o644, "phoenix.lock": 0o600,
                     "phoenix.sock": 0o600, "control.sock": 0o600}, {k: oct(v) for k, v in modes.items()}
    for wal in ("journal.db-wal", "journal.db-shm"):
        if (state / wal).exists():
            assert stat.S_IMODE(os.lstat(state / wal).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(log_file).st_mode) == 0o600
    for parent in (tmp_path / "made", tmp_path / "made" / "by", deep):
        assert stat.S_IMODE(os.stat(parent).st_mode) == 0o755, parent
    assert phoenix_cli("stop", state_dir=state).returncode == 0
    assert master.wait_exit() == 0
