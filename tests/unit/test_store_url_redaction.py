"""A store URL's password never reaches a message or a log line: the URL is
shown redacted, and a driver's error that quotes it (or its password alone)
is scrubbed before it is shown."""

from __future__ import annotations

import pytest

from phoenix.store.base import redact, scrub


@pytest.mark.parametrize("url, shown", [
    ("postgresql://x:hunter2@[bad", "postgresql://x:***@[bad"),
    ("postgresql://x:hunter2@db/p?sslmode=require", "postgresql://x:***@db/p?sslmode=require"),
    ("postgresql://x@db/p?password=hunter2&sslmode=require", "postgresql://x@db/p?password=***&sslmode=require"),
    ("postgresql://db/p", "postgresql://db/p"),
])
def test_a_store_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact(url) == shown
    said = scrub(f'invalid URI: "{url}" (password "hunter2", user x)', url)
    assert shown in said
    assert ("hunter2" in said) == ("hunter2" not in url)  # the URL's password only, nothing else


def test_a_percent_encoded_password_is_scrubbed_as_written_and_decoded() -> None:
    url = "postgresql://x:p%40ss@db/p"
    assert scrub(f"bad {url}; p@ss; p%40ss", url) == "bad postgresql://x:***@db/p; ***; ***"
