"""The pure parts of paging: a page and its cursor (`status --json`), and
`jobs`' cursor read back from its text."""

from __future__ import annotations

import pytest

from phoenix.cli.jobsview import BadCursor, parse_cursor
from phoenix.cli.status import page_of


def rows(*ids: int) -> list[dict[str, int]]:
    return [{"id": i} for i in ids]


def test_a_page_names_its_last_id_only_when_a_job_follows() -> None:
    assert page_of(iter(rows(4, 7, 9)), 2) == (rows(4, 7), 7)  # one more than the page: there is a next
    assert page_of(iter(rows(4, 7)), 2) == (rows(4, 7), None)  # exactly a page: the last
    assert page_of(iter([]), 2) == ([], None)


def test_a_cursor_reads_back_exactly_what_was_printed() -> None:
    updated_at = 1796612213.5749311
    assert parse_cursor(f"{updated_at!r}/18800") == (updated_at, 18800)


@pytest.mark.parametrize("text", ["", "yesterday", "1796612213.5/", "/42", "1.5/4.2", "1.5-42",
                                  "1.5/9223372036854775808",
                                  "nan/1", "inf/1", "1.5/-1"])
def test_a_malformed_cursor_is_refused_with_what_to_pass(text: str) -> None:
    with pytest.raises(BadCursor, match="next_after"):
        parse_cursor(text)
