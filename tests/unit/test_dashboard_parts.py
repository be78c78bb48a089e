"""The dashboard's pure parts: the key range of a prefix search, the Host
header's name, and how a value is shown on a page."""

from __future__ import annotations

from pathlib import Path

import pytest

from phoenix.store.sqlite import after_prefix

server = pytest.importorskip("phoenix.web.server", reason="the dashboard needs the web extra")


@pytest.mark.parametrize("prefix, beyond", [
    ("feed-", "feed."), ("a", "b"), ("z\U0010ffff", "{"), ("\U0010ffff", None), ("\U0010ffff" * 3, None),
    ("\ud7ff", "\ue000"), ("", None),
])
def test_the_end_of_a_prefix_range_is_the_least_string_past_every_key_that_starts_with_it(
        prefix: str, beyond: str | None) -> None:
    assert after_prefix(prefix) == beyond
    if beyond is not None:
        for key in (prefix, prefix + "\U0010ffff" * 2, prefix + "\x00"):
            assert key < beyond


@pytest.mark.parametrize("header, name", [
    ("127.0.0.1:8450", "127.0.0.1"), ("localhost", "localhost"), ("[::1]:8450", "[::1]"), ("[::1]", "[::1]"),
    ("evil.example:80", "evil.example"), ("", ""),
])
def test_the_host_a_request_names_is_read_without_its_port(header: str, name: str) -> None:
    assert server._host_name(header) == name


def test_a_value_is_shown_as_text_with_its_controls_written_out() -> None:
    assert server.shown(None) == "-"
    assert server.shown("a\u202eb\x1b") == "a\\u202eb\\x1b"  # a bidi override cannot reorder the row
    assert server.shown("line 1\nline 2", "pre") == "line 1\nline 2"
    assert server.shown(0, "time") == "1970-01-01 00:00:00"
    assert server.shown(1.234, "seconds") == "1.23"
    assert server.shown({"a": [1, "<b>é"]}, "json") == '{"a":[1,"<b>é"]}'  # markup is left to autoescape
    # A time or a number another tool damaged (text, bytes read as text): shown as it is, escaped.
    assert server.shown("soon\x1b[1m", "time") == "soon\\x1b[1m"
    assert server.shown("x\udcff", "seconds") == "x\\udcff"
    assert server.shown(1e300, "time") == "1e+300"
    assert server.job_link("k1\udcff") == "/job?key=k1%5Cudcff"  # a key that is not UTF-8: its escaped text


def test_what_json_cannot_hold_is_sent_as_text() -> None:
    body = {"result": [float("nan"), {"x": float("inf")}], "n": 1.5}
    assert server._finite(body) == {"result": ["nan", {"x": "inf"}], "n": 1.5}
    assert server.json_response({"k": "\udcff"}).body == b'{"k": "\\udcff"}'  # a lone surrogate, escaped


def test_a_master_that_left_its_journal_degraded_but_holds_no_lock_is_stopped(tmp_path: Path) -> None:
    """What the journal says of a master is believed only while it holds the lock: a master killed while
    degraded is stopped, and its old reason is not shown as today's."""
    from phoenix.linux.paths import StatePaths
    from phoenix.store.sqlite import Journal
    from phoenix.web import views

    paths = StatePaths(tmp_path)
    with Journal(paths.journal) as journal:
        journal.set_meta(generation=4, master_pid=999999, state="degraded", degraded_reason="ImportError: x")
        (master,) = views.local_master(paths, journal)["masters"]
    assert (master["state"], master["pid"], master["generation"], master["degraded_reason"]) == (
        "stopped", None, 4, None)


def test_a_job_that_names_no_node_ran_here_only_on_the_sqlite_journal(tmp_path: Path) -> None:
    import socket

    from phoenix.store.memory import MemoryStore
    from phoenix.web import views

    class SharedMemoryStore(MemoryStore):
        shared = True  # as PostgreSQL: each job's master names its node; the dashboard's host is no master

    for store, node in ((MemoryStore(), socket.gethostname()), (SharedMemoryStore(), None)):
        store.submit("m:f", "{}", "never-ran")
        (row,) = views.jobs(store, state=None, target=None, key_prefix=None, limit=10, after=None)["jobs"]
        assert row["node"] == node, type(store)
