"""Poison strings are data, never a crash: a job's error, result or callback
error holding lone surrogates (bytes that were not UTF-8, from os.fsdecode),
NUL, ESC or bidi controls, nested too deep or too large, is stored (escaped
where a text column cannot take it, on SQLite and PostgreSQL alike), logged,
shown and rendered, and the master watches on. A record the master cannot
process when it reads it back is quarantined (one log line, `phoenix
quarantine` to see and clear it), never a crash loop.

(Keys and terminal escapes of ordinary text: test_untrusted_strings.py;
garbage on the sockets: test_hostile_input.py.)"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix import log
from phoenix.app import AppError, check_target_form, encode_params
from phoenix.cli import batchview, jobsview, report, status
from phoenix.linux.untrusted import MAX_JSON_DEPTH, KeyRefused, check_key, storable, stored_json
from phoenix.rules.outcomes import classify
from phoenix.store.base import KeyConflict, Store
from phoenix.store.sqlite import Journal
from phoenix.wire import heartbeat as protocol
from tests.apps import replace_tools
from tests.conftest import Master, phoenix_cli, wait_for
from tests.faults.conftest import log_lines
from tests.faults.conftest import report as report_figures

APP = "tests.apps.poison:app"
POISON = "tests.apps.poison"
# What a job meets in the wild: a file name of another encoding, and text that a terminal would obey.
PATH_NOT_UTF8 = "report-\xff.csv"  # its latin-1 bytes, decoded by the job as os.fsdecode would a path
ESCAPES = "nul\x00 esc\x1b[2J cr\r bidi\u202eevil del\x7f c1\x9b ls\u2028"
# Characters no terminal, log line or text column should meet raw.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def shown_safely(text: str, *, lines: bool = True) -> None:
    """`text` (a terminal's, a log's, a page's) encodes as UTF-8 and carries no
    control character raw (newlines and tabs only where lines are allowed)."""
    text.encode("utf-8")
    assert not RAW.search(text), repr(RAW.search(text))
    if not lines:
        assert "\n" not in text and "\t" not in text


def job_row(state_dir: Path, key: str) -> dict[str, Any]:
    with Journal(state_dir / "journal.db", create=False) as journal:
        row = journal.job_by_key(key)
        assert row is not None, key
        return row


def callback_rows(state_dir: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(state_dir / "journal.db")
    try:
        cur = db.execute("SELECT j.key, c.kind, c.state, c.error FROM callbacks c JOIN jobs j ON j.id = c.job_id")
        return [dict(zip(("key", "kind", "state", "error"), row, strict=True)) for row in cur]
    finally:
        db.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# -- end to end: a master, its jobs, its operator's commands ------------------------------------------------


def test_a_job_error_that_is_not_utf8_fails_the_job_and_the_master_watches_on(master_factory, state_dir):
    master = master_factory(app=APP)
    master.submit(f"{POISON}:raises", {"fsdecode": PATH_NOT_UTF8}, "bad-path")
    master.submit(f"{POISON}:raises", {"text": ESCAPES}, "escapes")
    master.submit(f"{POISON}:raises", {"fsdecode": PATH_NOT_UTF8, "callback": "out-\xfe.csv"}, "bad-callback")
    master.submit(f"{POISON}:returns", {"fsdecode": PATH_NOT_UTF8}, "bad-result")
    # 100,000 characters that JSON escapes to 6 bytes each: far over one message, cut to fit it.
    master.submit(f"{POISON}:raises", {"text": "\x00\udcff", "repeat": 50_000, "callback": "\xff",
                                       "callback_repeat": 100_000}, "huge")
    jobs = master.wait_jobs_done(["bad-path", "escapes", "bad-callback", "bad-result", "huge"])
    assert jobs["huge"]["outcome"] == "error" and "[... traceback cut ...]" in jobs["huge"]["error"], jobs["huge"]
    assert alive(master.pid)
    assert jobs["bad-path"]["state"] == "failed" and jobs["bad-path"]["outcome"] == "error"
    # Stored escaped, as a text column takes it: the operator still reads which file it was.
    assert "RuntimeError: cannot import report-\\udcff.csv" in jobs["bad-path"]["error"]
    assert "RuntimeError: cannot import nul\\x00 esc\x1b[2J cr\r bidi\u202eevil" in jobs["escapes"]["error"]
    # The result keeps the surrogate losslessly (JSON escapes it); the store holds ASCII.
    assert jobs["bad-result"]["state"] == "finished" and jobs["bad-result"]["result"] == {"text": "report-\udcff.csv"}
    assert job_row(state_dir, "bad-result")["result"] == '{"text": "report-\\udcff.csv"}'
    callbacks = wait_for(lambda: (rows := [c for c in callback_rows(state_dir) if c["key"] == "bad-callback"])
                         and rows[0]["state"] == "done" and rows[0], 15, "the failing callback to be recorded")
    assert "callback could not write out-\\udcfe.csv" in callbacks["error"]
    huge_callback = wait_for(lambda: (rows := [c for c in callback_rows(state_dir) if c["key"] == "huge"])
                             and rows[0]["state"] == "done" and rows[0], 15, "the huge callback error")
    assert "[... traceback cut ...]" in huge_callback["error"] and len(huge_callback["error"]) < 200_000

    # The master still runs jobs, and every operator's view shows the strings escaped.
    master.submit(f"{POISON}:echo", {"after": True}, "after")
    assert master.wait_jobs_done(["after"])["after"]["state"] == "finished"
    for args in (("status",), ("show", "bad-path"), ("show", "escapes"), ("show", "bad-result"), ("jobs",)):
        shown = phoenix_cli(*args, state_dir=state_dir)
        assert shown.returncode == 0 and not shown.stderr, (args, shown.stderr)
        shown_safely(shown.stdout)
    assert "report-\\udcff.csv" in phoenix_cli("show", "bad-path", state_dir=state_dir).stdout
    as_json = phoenix_cli("status", "--json", state_dir=state_dir)
    assert as_json.returncode == 0 and as_json.stdout.isascii()
    json.loads(as_json.stdout)
    page = state_dir.parent / "timeline.html"
    assert phoenix_cli("report", "--html", str(page), state_dir=state_dir).returncode == 0
    shown_safely(page.read_text(encoding="utf-8"))
    master.stop()
    master_log = master.log_path.read_bytes().decode("utf-8")  # strict: every byte of the log is UTF-8
    shown_safely(master_log)
    assert "crash" not in master_log and "report-\\udcff.csv" in master_log
    assert log_lines(master_log, "callback_error", job="bad-callback")
    report_figures("poison_errors", jobs=6, log_bytes=len(master_log))


def test_a_poison_final_held_by_a_dead_master_is_recorded_at_the_next_start(master_factory, state_dir):
    """The crash loop of the issue: the master died after holding (and acking)
    a final whose error is not UTF-8; every later start met it first."""
    state_dir.mkdir(parents=True)
    with Journal(state_dir / "journal.db") as journal:
        for key in ("held", "nul"):
            job_id, _ = journal.submit(f"{POISON}:raises", "{}", key)
            claimed = journal.claim(1, None, None)  # no pid: the fork never happened, as far as the journal knows
            assert claimed is not None and claimed[0].id == job_id
            error = ("Traceback (most recent call last):\nRuntimeError: cannot import report-\udcff.csv"
                     if key == "held" else "RuntimeError: nul\x00 in a text column")
            final = protocol.encode(job_id, 1, "failed", 3, 0, error=error)  # what the child sent, as sent
            journal.hold_finals([(claimed[1], final.decode())])
    master = master_factory(app=APP)
    jobs = master.wait_jobs_done(["held", "nul"])
    assert "cannot import report-\\udcff.csv" in jobs["held"]["error"] and jobs["held"]["outcome"] == "error"
    assert "nul\\x00 in a text column" in jobs["nul"]["error"]
    assert alive(master.pid)
    master.submit(f"{POISON}:echo", {}, "after")
    assert master.wait_jobs_done(["after"])["after"]["state"] == "finished"


@pytest.mark.parametrize("column, value, said", [
    ("params", b"{}", "the parameters stored for it are not text (a bytes)"),
    ("params", "cast:" + '{"a": "\x80\xff"}', "the parameters stored for it are not valid UTF-8"),
    ("target", b"\xff\x00", "the target stored for it is not text (a bytes)"),
    ("target", "cast:" + "tests.apps.poison:\xff", "the target stored for it is not valid UTF-8"),
    ("checkpoint", "cast:" + '"\x80\xff"', "the checkpoint stored for it is not valid UTF-8"),
    ("checkpoint", b"{}", "the checkpoint stored for it is not text (a bytes)"),
    ("checkpoint", "{bad", "the checkpoint stored for it is not JSON this process can read"),
    ("checkpoint", "NaN", "the checkpoint stored for it is not JSON this process can read"),
    ("checkpoint", "[" * 100_000, "the checkpoint stored for it is JSON nested too deep to read"),
    # Numbers: arithmetic or a sort over them stopped every start (SQLite only: PostgreSQL's columns are typed).
    ("attempts", b"\x01\xff", "the attempts column of its row holds a blob value, not a number"),
    ("failures", b"\x01\xff", "the failures column of its row holds a blob value, not a number"),
    ("attempts", "two", "the attempts column of its row holds a text value, not a number"),
    ("priority", b"\x01", "the priority column of its row holds a blob value, not a number"),
    ("due_at", b"\x01", "the due_at column of its row holds a blob value, not a number"),
    ("not_before", "soon", "the not_before column of its row holds a text value, not a number"),
])
def test_a_job_row_damaged_by_another_tool_fails_its_job_with_the_reason(master_factory, state_dir, column, value,
                                                                         said):
    """Found from outside: a BLOB written into a job's row crashed the master
    at every start (the child's order could not be encoded), and a checkpoint
    that was not JSON ended each attempt with exit 70 and no word."""
    state_dir.mkdir(parents=True)
    with Journal(state_dir / "journal.db") as journal:
        journal.submit(f"{POISON}:echo", "{}", "damaged")
        journal.submit(f"{POISON}:echo", "{}", "sound")
    db = sqlite3.connect(state_dir / "journal.db")
    with db:
        if isinstance(value, str) and value.startswith("cast:"):  # text of bytes that are not UTF-8
            raw = value.removeprefix("cast:").encode("latin-1")
            db.execute(f"UPDATE jobs SET {column} = CAST(? AS TEXT) WHERE key = 'damaged'", (raw,))
        else:
            db.execute(f"UPDATE jobs SET {column} = ? WHERE key = 'damaged'", (value,))
    db.close()
    master = master_factory(app=APP)
    jobs = master.wait_jobs_done(["damaged", "sound"])
    assert jobs["damaged"]["state"] == "failed", jobs["damaged"]
    assert column == "attempts" or jobs["damaged"]["attempt"] == 0, jobs["damaged"]  # (a damaged count is shown)
    assert said in jobs["damaged"]["error"], jobs["damaged"]["error"]
    with Journal(state_dir / "journal.db", create=False) as journal:
        assert journal.attempts_of(jobs["damaged"]["id"]) == []  # failed before any attempt
    assert jobs["sound"]["state"] == "finished"
    assert alive(master.pid) and "Traceback" not in master.log()


def test_a_result_nested_too_deep_is_an_error_with_the_reason(master_factory):
    master = master_factory(app=APP)
    master.submit(f"{POISON}:returns", {"nest": 5000}, "very-deep")  # past what the child's encoder takes
    master.submit(f"{POISON}:returns", {"nest": MAX_JSON_DEPTH + 1}, "deep")  # encodable, past the limit
    master.submit(f"{POISON}:returns", {"nest": MAX_JSON_DEPTH - 1}, "deep-enough")  # within it
    master.submit(f"{POISON}:returns", {"json": "[NaN, Infinity]"}, "nan")
    jobs = master.wait_jobs_done(["very-deep", "deep", "deep-enough", "nan"])
    for key in ("very-deep", "deep"):
        assert jobs[key]["state"] == "failed" and jobs[key]["outcome"] == "error", jobs[key]
        assert f"nests more than {MAX_JSON_DEPTH} levels" in jobs[key]["error"]
    assert jobs["deep-enough"]["state"] == "finished"
    assert jobs["nan"]["outcome"] == "error" and "not JSON" in jobs["nan"]["error"]
    assert alive(master.pid)


def test_poison_parameters_and_targets_are_refused_at_submit_in_one_line(state_dir):
    target = f"{POISON}:echo"
    refused = {
        "nested too deep for the parser": (target, "[" * 50_000 + "]" * 50_000),
        "nested past the limit": (target, "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)),
        "NaN": (target, '{"a": NaN}'),
        "Infinity": (target, "[Infinity]"),
        "a raw control character": (target, '{"a": "\x1b[2J"}'),
        "a target that is not UTF-8": (f"{target}\udcff", "{}"),
        "a target with an escape": (f"{target}\x1b[31m", "{}"),
    }
    for what, (job_target, params) in refused.items():
        result = phoenix_cli("submit", job_target, params, state_dir=state_dir)
        assert result.returncode == 2, (what, result.returncode, result.stderr[-500:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("phoenix: error:") and len(lines[0]) < 600, (what, lines)
        shown_safely(lines[0], lines=False)
    # A string that is not UTF-8 inside the parameters is data: kept (JSON escapes it) and given to the job.
    kept = phoenix_cli("submit", target, '{"path": "report-\udcff.csv"}', "--key", "ok", state_dir=state_dir)
    assert kept.returncode == 0, kept.stderr
    assert job_row(state_dir, "ok")["params"] == '{"path":"report-\\udcff.csv"}'


def test_an_outbox_file_the_master_cannot_read_is_quarantined_and_cleared(master_factory, state_dir):
    """A dead master's attempt, and the file its child left in the outbox, which
    is not an outcome (truncated, of another version, tampered with): put
    aside with one log line, never dropped, never a crash."""
    state_dir.mkdir(parents=True)
    with Journal(state_dir / "journal.db") as journal:
        job_id, _ = journal.submit(f"{POISON}:echo", "{}", "left-behind")
        assert journal.claim(1, None, None) is not None
    (state_dir / "outbox").mkdir(mode=0o700)
    poison = b'{"v":1,"job":%d,"att":1,"k":"finished","seq":2,"p":0,"result":' % job_id + b"[" * 5000 + b"\xff\x00"
    (state_dir / "outbox" / f"{job_id}.1.json").write_bytes(poison)

    master = master_factory(app=APP)
    jobs = master.wait_jobs_done(["left-behind"])
    assert jobs["left-behind"]["outcome"] == "lost" and alive(master.pid)
    [line] = log_lines(master.log(), "quarantined", what="outbox")
    shown_safely(line, lines=False)
    assert not (state_dir / "outbox" / f"{job_id}.1.json").exists()  # gone from the outbox: read once
    piped = phoenix_cli("status", state_dir=state_dir)
    assert "quarantine: 1 record(s)" in piped.stdout, piped.stdout
    assert json.loads(phoenix_cli("status", "--json", state_dir=state_dir).stdout)["quarantined"] == 1
    listed = phoenix_cli("quarantine", state_dir=state_dir)
    assert listed.returncode == 0 and "outbox: not a valid outcome message" in listed.stdout, listed.stdout
    shown_safely(listed.stdout)
    [(name, entry)] = json.loads(phoenix_cli("quarantine", "--json", state_dir=state_dir).stdout)["records"].items()
    assert entry["bytes"] == len(poison) and entry["record"].endswith("[[[\\xff\x00")  # the record, kept whole
    # A name, never a path: nothing outside the quarantine goes.
    assert phoenix_cli("quarantine", "--clear", "../journal.db", state_dir=state_dir).returncode == 1
    cleared = phoenix_cli("quarantine", "--clear", name, state_dir=state_dir)
    assert cleared.returncode == 0 and "deleted 1 record(s)" in cleared.stdout
    assert "quarantine" not in phoenix_cli("status", state_dir=state_dir).stdout
    assert (state_dir / "journal.db").exists()
    master.stop()


def test_an_outcome_the_store_refuses_is_quarantined_not_a_crash(tmp_path, pg_url):
    """Whatever a store refuses of an outcome (here: a constraint, standing in
    for a value no escaping foresaw) ends the attempt as `error` with the
    record put aside; the master runs on, and so do its other jobs, whose
    errors hold what PostgreSQL's text refuses raw (NUL, a lone surrogate)."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE attempts ADD CONSTRAINT refuse CHECK (error NOT LIKE '%%refuse me%%')")
    state_dir = tmp_path / "state"
    master = Master(state_dir, APP, "--store", pg_url, "--node", "poison", log_dir=tmp_path).start()
    try:
        poison = (("refused", {"text": "refuse me"}), ("fine", {"text": "fine"}),
                  ("bad-path", {"fsdecode": PATH_NOT_UTF8}), ("nul", {"text": "a\x00b"}))
        for key, params in poison:
            result = phoenix_cli("submit", f"{POISON}:raises", json.dumps(params), "--key", key, "--store", pg_url)
            assert result.returncode == 0, result.stderr
        from phoenix.store.postgres import PgStore

        def ended() -> dict[str, Any] | None:
            with PgStore(pg_url) as store:
                jobs = {job["key"]: job for job in store.status_rows()}
            return jobs if all(jobs[k]["state"] == "failed" for k, _params in poison) else None

        jobs = wait_for(ended, 30, "every job to fail")
        assert "cannot import report-\\udcff.csv" in jobs["bad-path"]["error"]  # PostgreSQL's text takes neither raw
        assert "cannot import a\\x00b" in jobs["nul"]["error"]
        assert jobs["refused"]["outcome"] == "error" and "could not be recorded" in jobs["refused"]["error"]
        assert "RuntimeError: cannot import fine" in jobs["fine"]["error"]
        assert log_lines(master.log(), "quarantined", what="outcome", job="refused")
        assert alive(master.pid)
        listed = phoenix_cli("quarantine", "--json", state_dir=state_dir)
        [entry] = json.loads(listed.stdout)["records"].values()
        assert "refuse me" in entry["record"] and "CheckViolation" in entry["reason"]
    finally:
        master.stop()


# -- every field, on both stores: property tests ---------------------------------------------------------


SPECIALS = ["\udcff", "\udc80", "\ud800", "\x00", "\x1b", "\x1b[2J", "\r", "\n", "\t", "\x7f", "\x9b", "\u202e",
            "\u2066", "\u2028", "\ufeff", "\U0001f600", '"', "\\", "[/bold]", "<script>", "&amp;", "'"]
POISON_TEXT = st.lists(st.one_of(st.characters(), st.sampled_from(SPECIALS)), max_size=30).map("".join)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | POISON_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(POISON_TEXT, children, max_size=3),
    max_leaves=12)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        journal = Journal(tmp_path / "journal.db")
        yield journal
        journal.close()
        return
    pytest.importorskip("psycopg")
    from phoenix.store.postgres import PgStore

    shared = PgStore(request.getfixturevalue("pg_url"), node="poison-node", lease_ttl=30)
    shared.register_master(os.getpid(), 1, time.time(), 4, APP)
    yield shared
    shared.close()


_keys = itertools.count()


def as_json_keeps(value: Any) -> Any:
    """`value` as JSON gives it back: whole, except that two lone surrogates
    that form a pair come back as the one character they encode (UTF-16's rule)."""
    return json.loads(json.dumps(value))


def rendered(store: Store, key: str) -> list[str]:
    """Every text an operator sees of `key`'s job and of the store: `show`,
    `jobs`, `status` (piped), the timeline page."""
    outputs = []
    for draw in (lambda: jobsview.render_show(jobsview.show_report(store, store.job_by_key(key) or {})),
                 lambda: jobsview.render_jobs(jobsview.jobs_report(store, state=None, target=None, since=None,
                                                                    limit=5)),
                 lambda: status.render({"master": {"state": "stopped", "generation": 1}, "counts": store.counts(),
                                        "recent_failures": store.recent_failures(3),
                                        "jobs": [{**job, "last_beat_age": None}
                                                 for job in list(store.status_rows())[-5:]]})):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            draw()
        outputs.append(out.getvalue())
    outputs.append(report.build(store, f"timeline {key}"))  # type: ignore[arg-type]
    return outputs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=POISON_TEXT, target=POISON_TEXT, params=JSON_VALUES, error=POISON_TEXT, result=JSON_VALUES,
       callback_error=POISON_TEXT, detail=POISON_TEXT)
def test_every_field_is_stored_read_back_and_shown_on_both_stores(any_store: Store, key: str, target: str,
                                                                   params: Any, error: str, result: Any,
                                                                   callback_error: str, detail: str) -> None:
    store = any_store
    try:  # a key or target that cannot be shown faithfully is refused in one line; any other is kept as it is
        check_key(key)
    except KeyRefused as exc:
        shown_safely(str(exc), lines=False)
        key = f"refused-{next(_keys)}"
    key = f"{key}-{next(_keys)}"
    try:
        check_target_form(f"m:{target}")
        target = f"m:{target}"
    except AppError as exc:
        shown_safely(str(exc), lines=False)
        target = "m:f"
    job_id, created = store.submit(target, encode_params(params), key)
    assert created
    claimed = store.claim(1, 4242, None)
    assert claimed is not None and claimed[0].id == job_id
    attempt_id = claimed[1]

    # The child's final, held before the ack: JSON keeps the error losslessly.
    final = protocol.encode(job_id, 1, "failed", 1, 0, error=error)
    store.hold_finals([(attempt_id, final.decode())])
    [held] = [a for a in store.open_attempts() if a.attempt_id == attempt_id]
    message = protocol.decode((held.final or "").encode())
    assert message is not None and message.body["error"] == as_json_keeps(error)
    classified = classify(final=message.body, status=None, interrupted=False, kill_reason=None, kill_detail=None)
    finished = classify(final={"k": "finished", "result": result}, status=None, interrupted=False,
                        kill_reason=None, kill_detail=None)
    recorded, callback_id = store.end_attempt(
        attempt_id, job_id, outcome=classified.outcome, reason=error[:40], error=classified.error,
        result_json=finished.result_json, max_rss_kb=None, job_state="failed", counts_as_failure=True,
        callback="on_failed", attempt_n=1)
    assert recorded and callback_id is not None
    store.callback_done(callback_id, callback_error)
    store.record_event("poison", 1, os.getpid(), detail)

    # Read back: every value as stored (escaped only where a text column cannot take it).
    row = store.job_by_key(key)
    assert row is not None and row["target"] == target and row["error"] == storable(as_json_keeps(error))
    assert stored_json(row["params"]) == as_json_keeps(params) and stored_json(row["result"]) == as_json_keeps(result)
    [attempt] = store.attempts_of(job_id)
    assert attempt["error"] == row["error"] and attempt["reason"] == storable(error[:40])
    [owed] = [c for c in store.owed_callbacks() if c[0] == callback_id] or [None]
    assert owed is None  # done, with its error kept
    for job in store.status_rows():
        json.dumps(job).encode("ascii")  # what --json prints
    for text in rendered(store, key):
        shown_safely(text)
    for formatter in (log.TextFormatter(), log.JsonFormatter()):
        line = formatter.event_line(time.time(), logging.ERROR, os.getpid(), "job_failed",
                                    {"job": key, "target": target, "error": error, "detail": detail})
        shown_safely(line.split("\n", 1)[0], lines=False)  # the record's own line: no control raw, no break
        shown_safely(line)


def test_huge_and_deep_values_are_refused_or_kept_never_a_crash(any_store: Store) -> None:
    store = any_store
    huge = ("\udcff\x00\x1b" * 400_000)  # 1.2 million characters a callback might raise with
    job_id, _ = store.submit("m:f", encode_params({"huge": "x" * 1_000_000}), "huge")
    claimed = store.claim(1, 4242, None)
    assert claimed is not None
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    too_deep = classify(final={"k": "finished", "result": deep}, status=None, interrupted=False, kill_reason=None,
                        kill_detail=None)
    assert too_deep.outcome == "error" and "cannot be kept as JSON" in (too_deep.error or "")
    nan = classify(final={"k": "finished", "result": [float("nan")]}, status=None, interrupted=False,
                   kill_reason=None, kill_detail=None)
    assert nan.outcome == "error"
    with pytest.raises(AppError, match="nest more than"):
        encode_params(deep)
    recorded, callback_id = store.end_attempt(claimed[1], job_id, outcome="error", reason="r", error=huge,
                                              result_json=None, max_rss_kb=None, job_state="failed",
                                              counts_as_failure=True, callback="on_failed", attempt_n=1)
    assert recorded and callback_id is not None
    store.callback_done(callback_id, huge)
    row = store.job_by_key("huge")
    assert row is not None and row["error"] == storable(huge) and len(row["error"]) > len(huge)
    for text in rendered(store, "huge"):
        shown_safely(text)


def test_stored_json_another_process_cannot_read_is_shown_as_text(tmp_path: Path) -> None:
    """A journal written by an older release or another tool may hold JSON
    nested past any parser's stack, or not JSON at all: shown, not a crash."""
    with Journal(tmp_path / "journal.db") as journal:
        for key, params in (("deep", "[" * 100_000 + "]" * 100_000), ("damaged", '{"a": ')):
            db = journal.db
            db.execute("INSERT INTO jobs (key, target, params, state, created_at, updated_at) VALUES "
                       "(?, 'm:f', ?, 'failed', 0, 0)", (key, params))
        reports = {job["key"]: job for job in journal.status_rows()}
        assert reports["damaged"]["params"] == '{"a": ' and reports["deep"]["params"].startswith("[[[")
        for key in ("deep", "damaged"):
            [text] = [t for t in rendered(journal, key)[:1]]
            shown_safely(text)



def test_a_state_directory_that_is_not_utf8_names_its_master_on_the_shared_store(tmp_path, pg_url):
    """The default node name holds the state directory's path, whose bytes
    need not be UTF-8: kept as the store can (escaped). A --node with control
    characters is refused in one line."""
    refused = phoenix_cli("start", APP, "--store", pg_url, "--node", "a\x1b[2Jb", state_dir=tmp_path / "other")
    assert refused.returncode == 2, refused.stderr[-500:]
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("phoenix: error: node 'a\\x1b[2Jb'"), line
    state_dir = Path(os.fsdecode(os.fsencode(tmp_path) + b"/state-\xff"))
    master = Master(state_dir, APP, "--store", pg_url, log_dir=tmp_path).start()
    try:
        assert phoenix_cli("submit", f"{POISON}:echo", "{}", "--key", "k", "--store", pg_url).returncode == 0
        shown = wait_for(lambda: (out := phoenix_cli("status", "--store", pg_url)).returncode == 0
                         and "state-\\udcff" in out.stdout and out.stdout, 30, "the master to show in status")
        shown_safely(shown)
        from phoenix.store.postgres import PgStore

        def finished() -> bool:
            with PgStore(pg_url) as store:
                return any(job["key"] == "k" and job["state"] == "finished" for job in store.status_rows())

        wait_for(finished, 30, "the job to finish")
        assert alive(master.pid)
    finally:
        master.stop()


def test_operator_commands_naming_keys_no_store_can_hold_say_no_such_job(master_factory, state_dir):
    """A key or target typed with bytes that are not UTF-8 (or read from a
    file) names no job: one line, never a traceback, with or without a master."""
    master = master_factory(app=APP)
    master.submit(f"{POISON}:raises", {"text": "x"}, "failed-one")
    master.wait_jobs_done(["failed-one"])
    for running in (True, False):
        for args in (("cancel", "k\udcff"), ("show", "k\udcff"), ("retry", "k\udcff"),
                     ("retry", "failed-one", "k\udcff")):
            result = phoenix_cli(*args, state_dir=state_dir)
            assert result.returncode == 1, (running, args, result.stderr[-800:])
            [line] = result.stderr.strip().splitlines()
            assert "no job with key" in line and "k\\udcff" in line, line
            shown_safely(line, lines=False)
        for args in (("jobs", "--target", "m:f\udcff"), ("retry", "--failed", "--target", "m:f\udcff")):
            result = phoenix_cli(*args, state_dir=state_dir)
            assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr[-800:])
        assert job_row(state_dir, "failed-one")["state"] == "failed"  # the refused batch retried nothing
        if running:
            assert alive(master.pid) and "control_request_failed" not in master.log()
            master.stop()


@pytest.mark.parametrize("run_at", [1e300, -1e300])
def test_a_due_time_no_date_can_show_is_shown_as_it_is(any_store: Store, run_at: float) -> None:
    """A stored due time out of any date's range (written before submit
    bounded it, or by hand) is shown as its number: `show` never crashes."""
    key = f"far-{next(_keys)}"
    any_store.submit("m:f", "{}", key, run_at=run_at)
    shown = rendered(any_store, key)[0]
    assert f"due: {run_at!r} (not a date)" in shown, shown
    with pytest.raises(KeyConflict) as conflict:  # a resubmission that differs names the recorded time
        any_store.submit("m:f", "{}", key)
    assert repr(run_at) in str(conflict.value)


def test_an_operators_reads_show_a_job_row_another_tool_damaged_with_bytes(state_dir, tmp_path):
    """Found from outside: a BLOB in a job's key or target (sqlite3 reads it
    back as bytes) made `phoenix jobs` print a traceback. Every read shows
    the row, its bytes escaped, as it shows text that is not UTF-8."""
    state_dir.mkdir(parents=True)
    with Journal(state_dir / "journal.db") as journal:
        journal.submit(f"{POISON}:echo", "{}", "damaged")
        journal.submit_to_batch("nightly", [(f"{POISON}:echo", "{}", "sound")])
    db = sqlite3.connect(state_dir / "journal.db")
    with db:
        db.execute("UPDATE jobs SET key = ?, target = ?, params = ?, error = ? WHERE key = 'damaged'",
                   (b"damaged\xff", b"tests.apps.poison:\xfe", b"{}", b"\x1b[2J"))
        db.execute("UPDATE batches SET name = ?", (b"nightly\xff",))
    db.close()
    reads = {"jobs": ["jobs"], "jobs --json": ["jobs", "--json"], "status": ["status"],
             "status --json": ["status", "--json"], "show --json": ["show", "sound", "--json"],
             "report": ["report", "--html", str(tmp_path / "timeline.html")], "batches": ["batches"],
             "batches --json": ["batches", "--json"]}
    for what, arguments in reads.items():
        result = phoenix_cli(*arguments, state_dir=state_dir)
        assert result.returncode in (0, 3) and "Traceback" not in result.stderr, (what, result.stderr[-2000:])
        shown_safely(result.stdout, lines=True)
    listed = phoenix_cli("jobs", "--json", state_dir=state_dir)
    keys = {job["key"]: job["target"] for job in json.loads(listed.stdout)["jobs"]}
    assert keys == {"damaged\udcff": "tests.apps.poison:\udcfe", "sound": f"{POISON}:echo"}, keys
    assert "damaged\\udcff" in phoenix_cli("jobs", state_dir=state_dir).stdout
    batches = json.loads(phoenix_cli("batches", "--json", state_dir=state_dir).stdout)["batches"]
    assert [batch["name"] for batch in batches] == ["nightly\udcff"]
    db = sqlite3.connect(state_dir / "journal.db")
    with db:
        db.execute("UPDATE jobs SET state = 'failed' WHERE target = ?", (b"tests.apps.poison:\xfe",))
    db.close()
    retried = phoenix_cli("retry", "--failed", state_dir=state_dir)  # it said it failed once it had retried
    assert retried.returncode == 0, retried.stderr[-2000:]
    assert json.loads(retried.stdout) == {"retried": ["damaged\udcff"]}
    # Named by its bytes (as the shell hands them over; `phoenix jobs` shows them as damaged\udcff), it is found.
    shown = phoenix_cli("show", "damaged\udcff", "--json", state_dir=state_dir)
    assert shown.returncode == 0 and json.loads(shown.stdout)["key"] == "damaged\udcff", shown.stderr[-2000:]
    cancelled = phoenix_cli("cancel", "damaged\udcff", state_dir=state_dir)
    assert cancelled.returncode == 0, cancelled.stderr[-2000:]
    assert job_row(state_dir, "damaged\udcff")["state"] == "cancelled"
    assert json.loads(phoenix_cli("retry", "damaged\udcff", state_dir=state_dir).stdout) == {
        "retried": ["damaged\udcff"]}


# What an attacker wrote into a journal with sqlite3 (UPDATE ...): terminal
# controls in bytes (a BLOB) and text where Phoenix keeps text or numbers.
RED, TITLE, CLEAR = b"finished\x1b[31mRED", b"\x1b]0;pwned\x07", b"\x1b[2J"
DAMAGED_PROGRESS = json.dumps(["\x1b[6n", {"of": 1}, 5])  # phoenix.progress() writes numbers and a text note


def damaged_journal(path: Path) -> Journal:
    """A journal with a job that ran and failed, a batch, a master event and a
    failed job whose key is bytes, then damaged in every column a reader shows."""
    journal = Journal(path)
    job_id, _ = journal.submit(f"{POISON}:echo", "{}", "ran")
    journal.submit_to_batch("nightly", [(f"{POISON}:echo", "{}", "member")])
    claimed = journal.claim(1, 4242, None)
    assert claimed is not None and claimed[0].id == job_id
    journal.end_attempt(claimed[1], job_id, outcome="error", reason="r", error="e", result_json=None,
                        max_rss_kb=2048, job_state="failed", counts_as_failure=True, callback=None, attempt_n=1)
    journal.record_event("master_start", 1, os.getpid(), "started")
    db = journal.db
    db.execute("INSERT INTO jobs (key, target, params, state, created_at, updated_at) VALUES "
               "(?, 'm:f', '{}', 'failed', 1, 1)", (b"d-key\xff",))
    db.execute("UPDATE jobs SET key = ?, attempts = ?, updated_at = ?, created_at = ? WHERE key = 'ran'",
               (b"ran\xff", CLEAR, "soon\x1b[1m", b"\xfe"))
    db.execute("UPDATE jobs SET state = ? WHERE key = 'member'", (RED,))
    db.execute("UPDATE attempts SET outcome = ?, started_at = ?, ended_at = ?, max_rss_kb = ?, pid = ?, progress = ?",
               (TITLE, "yesterday\x1b[2J", b"\xff", "lots\x1b[5m", "\x1b[7mpid", DAMAGED_PROGRESS))
    db.execute("UPDATE batches SET state = ?, created_at = ?, jobs = ?", (CLEAR + b"open", "then\x1b[3m", CLEAR))
    db.execute("UPDATE events SET at = ?", ("when\x1b[4m",))
    return journal


def test_every_reader_shows_states_and_numbers_another_tool_damaged_escaped(tmp_path: Path) -> None:
    """Found from outside: BLOBs of terminal controls in jobs.state,
    attempts.outcome, batches.state reached the operator's terminal raw, and
    text or bytes in a numeric column (times, sizes, pids, counts) was a
    traceback in jobs, show, status, batches and report. Each is shown as it
    is, escaped; retry says which keys it retried, as text."""
    with damaged_journal(tmp_path / "journal.db") as journal:
        outputs = rendered(journal, "member")  # show, jobs, status, report
        shown_show = io.StringIO()
        with contextlib.redirect_stdout(shown_show):
            jobsview.render_show(jobsview.show_report(journal, journal.job_row(1) or {}))
            batchview.render_batches(batchview.batches_report(journal, 10))
        outputs.append(shown_show.getvalue())
        outputs.append(json.dumps(jobsview.show_report(journal, journal.job_row(1) or {})))
        outputs.append(status.progress_cell({"progress": protocol.progress_view(DAMAGED_PROGRESS)}))
        outputs.append(json.dumps(batchview.batches_report(journal, 10)))  # (member states count by their text)
        outputs.append(json.dumps(batchview.batch_jobs_report(journal, "nightly", state=None, target=None,
                                                              since=None, limit=10)))
        for text in outputs:
            shown_safely(text)
        everything = "".join(outputs)
        for escaped in ("\\x1b[6n", "finished\\x1b[31mRED", "\\x1b]0;pwned\\x07", "\\x1b[2Jopen", "yesterday\\x1b[2J",
                        "lots\\x1b[5m", "\\x1b[7mpid", "then\\x1b[3m", "soon\\x1b[1m"):
            assert escaped in everything, escaped
        retried = journal.retry(None)
        assert retried == ["ran\udcff", "d-key\udcff"] and json.dumps({"retried": retried})
        # Named as a shell hands over its bytes, a key stored as bytes, or as text that is not UTF-8, is found.
        journal.db.execute("UPDATE jobs SET key = CAST(key AS TEXT) WHERE key = ?", (b"d-key\xff",))
        assert journal.cancel_pending("d-key\udcff") == "pending"
        assert (journal.job_by_key("d-key\udcff") or {}).get("state") == "cancelled"
        assert journal.retry(["d-key\udcff"]) == ["d-key\udcff"]


def page(app: Any, path: str) -> tuple[int, str]:
    """(status, body) of a GET of the dashboard's ASGI app, in this process."""
    import asyncio
    from urllib.parse import urlsplit

    address = urlsplit(path)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": address.path, "raw_path": address.path.encode(), "query_string": address.query.encode(),
             "root_path": "", "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 1),
             "server": ("localhost", 80)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]).decode("utf-8")


def test_every_dashboard_page_shows_what_another_tool_damaged_escaped(tmp_path: Path) -> None:
    """Found from outside: a job key or a batch member's key that is not
    UTF-8, a BLOB in jobs.state, text in a time column: /jobs, /job,
    /timeline and /failures answered 500. Every page shows them escaped."""
    server = pytest.importorskip("phoenix.web.server", reason="the dashboard needs the web extra")
    from phoenix.linux.paths import StatePaths

    damaged_journal(tmp_path / "journal.db").close()
    db = sqlite3.connect(tmp_path / "journal.db")
    # A batch member's key, a key that is text but not UTF-8, and one a page can name (its times damaged).
    with db:
        db.execute("UPDATE jobs SET key = ? WHERE key = 'member'", (b"member\xff",))
        db.execute("UPDATE jobs SET key = 'ran' WHERE key = ?", (b"ran\xff",))
        db.execute("UPDATE jobs SET key = CAST(x'6b31ff' AS TEXT) WHERE key = ?", (b"d-key\xff",))
    db.close()

    def refused(key: str) -> dict[str, Any]:
        raise AssertionError("no action is asked here")

    dashboard = server.Dashboard(StatePaths(tmp_path), None, lambda: Journal(tmp_path / "journal.db", create=False),
                                 refused, refused, None)
    app = server.create_app(dashboard, None)
    pages = {}
    for path in ("/jobs", "/jobs?state=failed", "/job?key=ran", "/failures", "/timeline", "/api/jobs", "/api/jobs/ran",
                 "/api/timeline", "/api/failures"):
        status, pages[path] = page(app, path)
        assert status == 200, (path, status, pages[path][-2000:])
        shown_safely(pages[path])
    for path, escaped in (("/jobs", "k1\\udcff"), ("/jobs", "member\\udcff"), ("/jobs", "finished\\x1b[31mRED"),
                          ("/jobs", "soon\\x1b[1m"), ("/jobs", 'href="/job?key=k1%5Cudcff"'),
                          ("/job?key=ran", "yesterday\\x1b[2J"), ("/job?key=ran", "\\x1b]0;pwned\\x07"),
                          ("/job?key=ran", "lots\\x1b[5m"), ("/timeline", "when\\x1b[4m"),
                          ("/timeline", "yesterday\\x1b[2J"), ("/failures", "soon\\x1b[1m")):
        assert escaped in pages[path], (path, escaped)


@pytest.mark.parametrize("column, said", [("final", "quarantined what=final"),
                                          ("started_boot", "attempt_damaged job=held attempt=1 column=started_boot"),
                                          ("n", "attempt_damaged job=held attempt=1 column=n"),
                                          ("pid", "attempt_damaged job=held attempt=1 column=pid"),
                                          ("start_time", "attempt_damaged job=held attempt=1 column=start_time")])
def test_a_running_attempt_damaged_with_bytes_is_adopted_and_said_once(master_factory, state_dir, tmp_path, column,
                                                                        said):
    """Found from outside: a BLOB in a running attempt's held final (or its
    boot-clock start) crashed every new master in adopt_running_attempts
    (the child left orphaned), and in its number left the job running for
    ever; in its pid or process start time, the child was taken for dead
    and the job ran twice at once. The final is put aside, the start not
    counted from, the number taken from the job's count, the process found
    by its title and process group, with one line; the child is adopted and
    its own final recorded."""
    release = tmp_path / "release"
    first = master_factory(app=replace_tools.APP)
    first.submit(replace_tools.UNTIL, {"path": str(release)}, key="held")
    pid = wait_for(lambda: (j := first.jobs().get("held")) and j["pid"], replace_tools.SLOW, "the job to run")
    db = sqlite3.connect(state_dir / "journal.db")
    with db:
        assert db.execute(f"UPDATE attempts SET {column} = x'7b7dff' WHERE outcome IS NULL").rowcount == 1
    db.close()
    assert phoenix_cli("stop", "--leave-running", state_dir=state_dir).returncode == 0
    assert first.wait_exit(replace_tools.SLOW) == 0 and alive(pid)

    second = master_factory(app=replace_tools.APP, start=False).start(wait_ready=False)
    log = second.wait_log("ready generation=2", timeout=replace_tools.SLOW)
    assert f"adopt pid={pid} job=held attempt=1" in log, log[-3000:]
    [line] = [line for line in log.splitlines() if said in line]
    assert column != "final" or ("not text (a bytes)" in line and "job=held attempt=1" in line), line
    release.touch()
    jobs = second.wait_jobs_done(["held"], timeout=replace_tools.SLOW)
    assert jobs["held"]["state"] == "finished" and jobs["held"]["attempt"] == 1, jobs["held"]
    assert alive(second.pid) and "Traceback" not in second.log()


def damage_meta(state_dir: Path, names: tuple[str, ...], value: str) -> None:
    """Another tool's UPDATE of the journal's meta rows (`value`: an SQL literal, x'..' a BLOB)."""
    db = sqlite3.connect(state_dir / "journal.db")
    with db:
        db.execute(f"UPDATE meta SET value = {value} WHERE name IN ({', '.join('?' * len(names))})", names)
    db.close()


def journal_of_one_run(master_factory) -> Master:
    """A journal a master ran a job from (generation 1 recorded), the master stopped."""
    master = master_factory(app=APP)
    master.submit(f"{POISON}:echo", {}, "before")
    master.wait_jobs_done(["before"])
    master.stop()
    return master


@pytest.mark.parametrize("value, said", [("x'78ff'", "is not text (a bytes)"),
                                         ("'\"abc\"'", "is JSON that is not a whole number")])
def test_a_damaged_generation_refuses_the_start_in_one_line_with_the_fix(master_factory, state_dir, value, said):
    """Found from outside: a generation another tool damaged made every start
    print a traceback (exit 1). The master counts on it, so it does not guess:
    one line names the row and the value to set, from the journal's events."""
    journal_of_one_run(master_factory)
    damage_meta(state_dir, ("generation",), value)
    line = refused_start(phoenix_cli("start", APP, state_dir=state_dir, timeout=30))
    assert "meta row 'generation'" in line and said in line, line
    assert "UPDATE meta SET value = '1' WHERE name = 'generation'" in line, line
    for args in (("status",), ("status", "--json")):  # an operator's reads still answer
        shown = phoenix_cli(*args, state_dir=state_dir)
        assert shown.returncode == 3 and "Traceback" not in shown.stderr, (args, shown.stderr)  # 3: stopped
    damage_meta(state_dir, ("generation",), "'1'")  # the fix the line gave
    master = master_factory(app=APP)
    assert "ready generation=2" in master.log()


def test_a_generation_damaged_while_a_master_runs_does_not_stop_its_replacement(master_factory, state_dir, tmp_path):
    """Found from outside: a BLOB in the generation row while a master ran,
    then `phoenix reload`: the preflight passed, the exec'd image refused to
    start and exited, leaving the running child with no master. The image
    takes the generation its predecessor handed over, says so in one line,
    adopts the child and writes the row back."""
    release = tmp_path / "release"
    master = master_factory(app=replace_tools.APP)
    master.submit(replace_tools.UNTIL, {"path": str(release)}, key="held")
    pid = wait_for(lambda: (j := master.jobs().get("held")) and j["pid"], replace_tools.SLOW, "the job to run")
    damage_meta(state_dir, ("generation",), "x'ff'")
    result = phoenix_cli("reload", "--wait", state_dir=state_dir, timeout=replace_tools.SLOW)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    log = master.wait_log("ready generation=2", timeout=replace_tools.SLOW)
    assert alive(master.pid) and f"adopt pid={pid} job=held attempt=1" in log, log[-3000:]
    [line] = [line for line in log.splitlines() if " generation_damaged row=" in line]
    assert "generation=2" in line and "meta row 'generation'" in line, line
    release.touch()
    jobs = master.wait_jobs_done(["held"], timeout=replace_tools.SLOW)
    assert jobs["held"]["state"] == "finished" and jobs["held"]["attempt"] == 1, jobs["held"]
    db = sqlite3.connect(state_dir / "journal.db")
    assert db.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone() == ("2",)
    db.close()
    assert "Traceback" not in master.log()


def refused_start(result: Any) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("phoenix: error: "), line
    return line


@pytest.mark.parametrize("value", ["x'78ff'", "'{bad'"])
def test_meta_rows_the_master_only_reports_are_read_as_absent_when_damaged(master_factory, state_dir, value):
    """Found from outside: a damaged started_at, app, state or master_pid made
    `phoenix status` and `phoenix schedules` print tracebacks and every start
    fail. They are read as not recorded, with a warning; the master writes
    them afresh when ready."""
    journal_of_one_run(master_factory)
    damage_meta(state_dir, ("started_at", "app", "state", "master_pid", "degraded_reason", "run_started_at"), value)
    for args in (("status",), ("status", "--json"), ("schedules",), ("schedules", "--json")):
        shown = phoenix_cli(*args, state_dir=state_dir)
        assert "Traceback" not in shown.stderr, (args, shown.stderr)
        # status: 3, the master is stopped; schedules: 2, name the app (none is recorded now)
        assert shown.returncode == (3 if args[0] == "status" else 2), (args, shown.returncode, shown.stderr)
        assert "meta row 'started_at'" in shown.stderr or "meta row 'app'" in shown.stderr, shown.stderr
    master = master_factory(app=APP)
    master.submit(f"{POISON}:echo", {}, "after")
    assert master.wait_jobs_done(["after"])["after"]["state"] == "finished"
    status = json.loads(phoenix_cli("status", "--json", state_dir=state_dir).stdout)["master"]
    assert status["generation"] == 2 and isinstance(status["started_at"], float), status
    assert "Traceback" not in master.log()


@pytest.mark.parametrize(("column", "value"), [("checkpoint_attempt", b"\x01"), ("checkpoint_seq", "x"),
                                                ("attempts", b"\x01")])
def test_a_checkpoint_is_kept_over_a_mark_another_tool_damaged(state_dir, column, value):
    """Found from outside: with a job's checkpoint mark made a BLOB or text
    while it ran, every later checkpoint was acknowledged to the job and never
    stored (the save's comparison matched no row), with no word."""
    state_dir.mkdir(parents=True)
    with Journal(state_dir / "journal.db") as journal:
        job_id, _ = journal.submit(f"{POISON}:echo", "{}", "saving")
        claimed = journal.claim(1, None, None)
        assert claimed is not None
        journal.save_checkpoints([(job_id, 1, 1, '{"i": 1}')])
        db = sqlite3.connect(state_dir / "journal.db")
        with db:
            db.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (value, job_id))
        db.close()
        journal.save_checkpoints([(job_id, 1, 2, '{"i": 2}')])
        assert journal.checkpoint_of(job_id) == '{"i": 2}'


def test_pools_shows_a_pool_row_another_tool_damaged(state_dir):
    """Found from outside: a BLOB pool name made `phoenix pools` print a traceback."""
    state_dir.mkdir(parents=True)
    Journal(state_dir / "journal.db").close()
    db = sqlite3.connect(state_dir / "journal.db")
    with db:
        db.execute("INSERT INTO pools (name, capacity, used) VALUES (?, ?, ?)", (b"A\xff\x1b[2J", 2, b"\xff"))
    db.close()
    for arguments in (["pools"], ["pools", "--json"]):
        result = phoenix_cli(*arguments, state_dir=state_dir)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        shown_safely(result.stdout)
    assert "A\\udcff\\x1b[2J  \\udcff/2" in phoenix_cli("pools", state_dir=state_dir).stdout
