"""The pure helpers that keep poison strings data (phoenix/untrusted.py):
what a store keeps of a text, how deep JSON may nest, how a traceback is cut
to fit one message."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix.linux.untrusted import (
    MAX_JSON_DEPTH,
    UnusableFile,
    cut_traceback,
    json_too_deep,
    read_left_file,
    storable,
    stored_json,
    unstorable,
)

SPECIALS = st.sampled_from(["\udcff", "\ud800", "\x00", "\x1b", "\\", '"', "[", "]", "{", "}", "\u202e"])
TEXT = st.lists(st.one_of(st.characters(), SPECIALS), max_size=80).map("".join)


@given(TEXT)
def test_storable_text_encodes_has_no_nul_and_keeps_clean_text_as_it_is(text: str) -> None:
    kept = storable(text)
    kept.encode("utf-8")
    assert "\x00" not in kept
    clean = "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    assert (kept == text) == clean and unstorable(text) == (not clean)


def test_storable_escapes_as_visible_does() -> None:
    assert storable("report-\udcff.csv") == "report-\\udcff.csv"
    assert storable("a\x00b") == "a\\x00b"
    assert storable("\x1b[2J café") == "\x1b[2J café"  # shown escaped where it is shown, stored as it is


@given(st.integers(min_value=0, max_value=2 * MAX_JSON_DEPTH), st.sampled_from(["[]", "{}"]))
def test_json_too_deep_counts_nesting_not_brackets_in_strings(depth: int, pair: str) -> None:
    nested = pair[0] * depth + pair[1] * depth
    assert json_too_deep(nested) == (depth > MAX_JSON_DEPTH)
    flat = json.dumps(["[" * (3 * MAX_JSON_DEPTH), '\\"{{{', "]"])  # brackets inside strings do not nest
    assert not json_too_deep(flat)


@given(TEXT, st.integers(min_value=40, max_value=4000))
def test_a_cut_traceback_fits_its_json_budget_and_keeps_head_and_end(text: str, budget: int) -> None:
    text = text * 50
    cut = cut_traceback(text, json_bytes=budget)
    assert len(json.dumps(cut)) <= budget or cut == "\n[... traceback cut ...]\n"
    if cut != text:
        head, _marker, end = cut.partition("\n[... traceback cut ...]\n")
        assert text.startswith(head) and text.endswith(end)
    assert cut_traceback("short") == "short"


def test_stored_json_reads_json_and_gives_back_what_it_cannot_read_as_text() -> None:
    assert stored_json('{"a": [1, "\\udcff"]}') == {"a": [1, "\udcff"]}
    for unreadable in ("[" * 100_000 + "]" * 100_000, '{"a": ', "[NaN]", "Infinity"):
        assert stored_json(unreadable) == unreadable


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_left_file_of_another_user_is_not_read(tmp_path):
    # Found from outside: with the outbox opened to others after the master
    # started, a file planted by `nobody` became the next attempt's checkpoint.
    planted = tmp_path / "1.2.checkpoint.json"
    planted.write_text('{"forged": true}')
    os.chown(planted, 65534, 65534)
    with pytest.raises(UnusableFile, match="owned by uid 65534, not by this user"):
        read_left_file(str(planted), 1000)
    os.chown(planted, os.geteuid(), os.getegid())
    assert read_left_file(str(planted), 1000) == b'{"forged": true}'
