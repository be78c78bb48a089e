"""Answers tell the truth (issue 18, class 5, and the smaller items found with
it): a documented limit is the limit a user meets, a damaged journal is
refused by every command that writes, and every cancelled job gets the
`on_failed` the README promises."""

from __future__ import annotations

from tests.conftest import Master

APP = "tests.apps.truths:app"
TRUTHS = "tests.apps.truths"


# -- a result's limit is the result's own: 64 KiB of JSON ---------------------------------------


def test_a_result_of_exactly_64_kib_of_json_finishes_and_one_byte_more_is_refused_with_its_size(master_factory):
    master: Master = master_factory(app=APP)
    sizes = {"at-limit": 65536, "seen-refused": 65476, "one-over": 65537}
    for key, size in sizes.items():
        master.submit(f"{TRUTHS}:sized_result", {"bytes": size}, key=key)
    jobs = master.wait_jobs_done(list(sizes))
    assert jobs["at-limit"]["state"] == "finished", jobs["at-limit"]["error"]
    assert jobs["seen-refused"]["state"] == "finished", jobs["seen-refused"]["error"]
    results = {c["key"]: c for c in master.callbacks() if c["kind"] == "finished"}
    assert set(results) == {"at-limit", "seen-refused"}
    over = jobs["one-over"]
    assert over["outcome"] == "error"
    assert "the job's result is 65537 bytes of JSON" in over["error"]
    assert "65536-byte limit of a result" in over["error"]
