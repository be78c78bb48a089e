"""Phoenix's events are written straight to the log (log.event, without a
LogRecord) only while nothing but setup()'s handler would see them; the line
is the one the logging path writes, and anything an app adds to logging (a
handler, a filter) still gets every event."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix import log
from phoenix.linux.untrusted import visible

TEXTS = st.text(st.characters(codec="utf-8") | st.sampled_from("\n\t\r \"\x1b\u202e\x00"), max_size=30)
FIELDS = st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                         st.integers() | TEXTS | st.none() | st.booleans() | st.floats(allow_nan=False), max_size=5)


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Path]:
    """setup() to a file; afterwards, logging as it was."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, log._handler, log._formatter, log._master_pid)
    root.handlers.clear()
    log._handler = None
    path = tmp_path / "phoenix.log"
    log.setup("debug", "text", str(path))
    try:
        yield path
    finally:
        assert log._handler is not None
        log._handler.close()
        root.handlers[:], level, log._handler, log._formatter, log._master_pid = saved
        root.setLevel(level)
        log.log.filters.clear()


def _reference_plain(text: str) -> str:
    """The field rule the fast paths of log._plain must agree with."""
    return json.dumps(text) if (not text or " " in text or '"' in text or visible(text) != text) else text


@given(TEXTS)
def test_plain_follows_the_escaping_rule(text: str) -> None:
    assert log._plain(text) == _reference_plain(text)


@pytest.mark.parametrize("formatter", [log.TextFormatter(), log.JsonFormatter()], ids=["text", "json"])
@given(name=st.sampled_from(["spawn", "complete", "odd\x1bname", "two\nlines"]), fields=FIELDS,
       level=st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]),
       created=st.floats(min_value=0, max_value=2**32))
def test_an_event_line_is_what_a_log_record_makes(formatter: logging.Formatter, name: str, fields: dict[str, Any],
                                                  level: int, created: float) -> None:
    record = log.log.makeRecord("phoenix", level, "x", 1, "%s", (name,), None, extra={"phoenix_fields": fields})
    record.created, record.msecs, record.process = created, int((created - int(created)) * 1000) + 0.0, 4242
    assert isinstance(formatter, log.TextFormatter | log.JsonFormatter)
    assert formatter.event_line(created, level, 4242, name, fields) == formatter.format(record)


def test_events_go_straight_to_the_file(logged: Path) -> None:
    log.event(logging.INFO, "spawn", pid=12, job="a key", attempt=1)
    log.event(logging.DEBUG, "beat", pid=12, seq=3)
    lines = logged.read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ['spawn pid=12 job="a key" attempt=1', "beat pid=12 seq=3"]


def test_a_handler_an_app_adds_gets_every_event(logged: Path) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logging.getLogger().addHandler(keep)
    try:
        log.event(logging.INFO, "spawn", pid=12, job="k", attempt=1)
    finally:
        logging.getLogger().removeHandler(keep)
    assert [(r.getMessage(), getattr(r, "phoenix_fields", None)) for r in seen] == [
        ("spawn", {"pid": 12, "job": "k", "attempt": 1})]
    assert logged.read_text().rstrip().endswith("spawn pid=12 job=k attempt=1")


def test_a_filter_an_app_adds_is_obeyed(logged: Path) -> None:
    log.log.addFilter(lambda record: record.getMessage() != "spawn")
    log.event(logging.INFO, "spawn", pid=12)
    log.event(logging.INFO, "complete", pid=12)
    assert [line.split("] ", 1)[1] for line in logged.read_text().splitlines()] == ["complete pid=12"]
