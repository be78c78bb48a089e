"""A burst of starts keeps the fork server forking ahead (issue 22, 10,000
children): the spawner asks for the children of the jobs the scheduler will
start next while the master records the current one, instead of one
round trip master -> server -> master per child, each waiting behind every
runnable process of a machine busy with thousands of beating children.

A real fork server and real waiting children; the spawner in-process."""

from __future__ import annotations

import os
from pathlib import Path

from phoenix.app import App
from phoenix.config import Config
from phoenix.linux.clock import SYSTEM
from phoenix.linux.paths import StatePaths
from phoenix.master.loop import Loop
from phoenix.master.spawner import FORKS_AHEAD, Spawner
from phoenix.master.specs import JobSpecs
from tests.conftest import wait_for


def test_a_take_with_jobs_ahead_has_the_server_fork_their_children_at_once(tmp_path: Path) -> None:
    config = Config(state_dir=str(tmp_path / "state"))
    paths = StatePaths(Path(config.state_dir))
    paths.ensure()
    loop = Loop(SYSTEM)
    loop.open()
    spawner = Spawner("tests.apps.jobs:app", lambda: config, paths, JobSpecs(App("t"), lambda: config), loop,
                      lambda: 100, lambda: True)
    children: list[int] = []
    taken = []
    try:
        # (No check_app_threads: it looks at this process's threads, and a pytest-xdist worker has
        # its own, which would keep spawns in the master and leave no server to fork ahead.)
        own = spawner.take(ahead=0)  # starts the server (this first child comes from the master itself)
        own.send(b"")  # no order: it exits unrun
        os.waitpid(own.pid, 0)
        server = spawner.server
        assert server is not None
        wait_for(lambda: spawner._read_server() or server.ready, what="the fork server to import the app")
        first = spawner.take(ahead=7)  # the first of 8 jobs: the other 7 children are asked for now
        taken.append(first)
        children.append(first.pid)
        wait_for(lambda: spawner._read_server() or len(spawner.ready) == 7, timeout=20.0,
                 what="the 7 children of the jobs ahead, forked without another take")
        assert not server.in_flight
        children += [waiting.pid for waiting in spawner.ready]
        assert len(set(children)) == 8
        # However many jobs are ahead, no more than FORKS_AHEAD children wait at once.
        taken.append(spawner.take(ahead=1000))
        wait_for(lambda: spawner._read_server() or len(spawner.ready) == FORKS_AHEAD - 1, timeout=20.0,
                 what=f"{FORKS_AHEAD - 1} children ahead")
        assert not server.in_flight
    finally:
        waiting_pids = [waiting.pid for waiting in [*taken, *spawner.ready]]
        for waiting in taken:
            os.close(waiting.order_fd)  # no order: EOF, and it exits unrun
        spawner.discard()  # so do the spares; the server reaps them and exits
        for waiting_pid in {*children, *waiting_pids}:
            wait_for(lambda pid=waiting_pid: not _alive(pid), what=f"waiting child {waiting_pid} to exit")
        loop.selector.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
