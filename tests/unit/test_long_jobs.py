"""The pure parts of long jobs (docs/long-jobs.md): what phoenix.progress()
and phoenix.checkpoint() accept, the polite stop's handler, the checkpoint
message, the outcome of a job that let phoenix.Interrupted end it, and the
bounded rate at which progress is written (the stores' rules: tests/store/test_contract.py)."""

from __future__ import annotations

import json
import math

import pytest

from phoenix.child.longjobs import MAX_NOTE_CHARS, Interrupted, PoliteStop, check_checkpoint, progress_value
from phoenix.linux.untrusted import MAX_JSON_DEPTH
from phoenix.master.attempts import Attempt
from phoenix.master.longjobs import PROGRESS_WRITE_EVERY, ProgressWriter
from phoenix.rules.outcomes import POLITELY_STOPPED, STOPPED_THEN_FAILED, classify
from phoenix.rules.states import KillReason, Outcome
from phoenix.wire import heartbeat as protocol


@pytest.mark.parametrize(("args", "expected"), [
    ((3, None, None), [3, None, None]),
    ((2.5, 10, "page 3"), [2.5, 10, "page 3"]),
    ((0, 0.0, ""), [0, 0.0, ""]),
])
def test_progress_takes_numbers_and_a_short_note(args, expected):
    assert progress_value(*args) == expected


@pytest.mark.parametrize(("args", "fix"), [
    ((True, None, None), "got a bool for done: pass an int"),
    (("3", None, None), "got a str for done: pass an int"),
    ((math.nan, None, None), "got a number out of range for done"),
    ((1, math.inf, None), "got a number out of range for total"),
    ((10**5000, None, None), "got a number out of range for done: pass an int (below 2**63 in size)"),
    ((1, None, 7), "takes a str note"),
    ((1, None, "x" * (MAX_NOTE_CHARS + 1)), f"over the {MAX_NOTE_CHARS}-character limit"),
])
def test_progress_refuses_anything_else_in_one_line_naming_the_fix(args, fix):
    with pytest.raises((TypeError, ValueError)) as raised:
        progress_value(*args)
    assert fix in str(raised.value) and "\n" not in str(raised.value)


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_a_checkpoint_is_json_or_a_line_naming_the_fix():
    assert check_checkpoint({"cursor": "k\x00", "n": [1, 2.5, None]}) == '{"cursor":"k\\u0000","n":[1,2.5,null]}'
    for bad, fix in (({1, 2}, "a checkpoint must be JSON"), (math.nan, "a checkpoint must be JSON"),
                     (_nested(MAX_JSON_DEPTH + 1), "save a flatter value")):
        with pytest.raises((TypeError, ValueError), match=fix):
            check_checkpoint(bad)


def test_a_checkpoint_message_round_trips_and_its_limit_is_the_checkpoints_own():
    message = protocol.decode(protocol.encode(7, 2, protocol.CHECKPOINT, 5, 0, **{protocol.SAVED: {"next": 3}}))
    assert message is not None and message.kind == protocol.CHECKPOINT and message.body[protocol.SAVED] == {"next": 3}
    protocol.encode(7, 2, protocol.CHECKPOINT, 5, 0, **{protocol.SAVED: "x" * (protocol.MAX_CHECKPOINT_BYTES - 2)})
    with pytest.raises(protocol.CheckpointTooLarge, match="save a cursor"):
        protocol.encode(7, 2, protocol.CHECKPOINT, 5, 0, **{protocol.SAVED: "x" * (protocol.MAX_CHECKPOINT_BYTES - 1)})
    # As docs/long-jobs.md says: counted as sent, a character outside ASCII as its 6-byte escape.
    escaped = (protocol.MAX_CHECKPOINT_BYTES - 2) // 6 + 1
    assert len(("\u00e9" * escaped).encode()) < protocol.MAX_CHECKPOINT_BYTES < 6 * escaped + 2
    with pytest.raises(protocol.CheckpointTooLarge, match=f"is {6 * escaped + 2} bytes"):
        protocol.encode(7, 2, protocol.CHECKPOINT, 5, 0, **{protocol.SAVED: "\u00e9" * escaped})


def test_the_first_term_raises_interrupted_once_and_never_inside_a_checkpoint():
    stop = PoliteStop()
    stop.job_running = True
    stop.saving = True
    stop.on_term(15, None)  # inside phoenix.checkpoint(): marked only
    assert stop.asked and not stop.raised
    stop.saving = False
    with pytest.raises(Interrupted):
        stop.raise_if_due()  # as checkpoint() does once saved
    stop.on_term(15, None)  # a second TERM: marked only
    after = PoliteStop()
    after.job_over()
    after.on_term(15, None)  # the job returned: its outcome is handed over in peace
    assert after.asked and not after.raised


INTERRUPTED_FINAL = {protocol.KIND: "failed", protocol.ERROR: "Traceback ...\nphoenix.Interrupted",
                     protocol.INTERRUPTED: True}


@pytest.mark.parametrize(("interrupted", "kill_reason", "outcome"), [
    (True, None, Outcome.INTERRUPTED),  # phoenix stop, a drain out of time: no retry used
    (False, KillReason.HEARTBEAT_TIMEOUT, Outcome.KILLED),  # a hang kill's TERM: still the kill
    (False, KillReason.CANCELLED, Outcome.CANCELLED),
    (False, None, Outcome.SIGNALLED),  # a TERM its master did not send: as a SIGTERM that killed it
])
def test_a_job_that_let_interrupted_end_it_is_judged_by_why_it_was_stopped(interrupted, kill_reason, outcome):
    result = classify(final=INTERRUPTED_FINAL, status=256, interrupted=interrupted, kill_reason=kill_reason,
                      kill_detail=None)
    assert result.outcome == outcome
    assert (result.reason == POLITELY_STOPPED) == (outcome == Outcome.INTERRUPTED)


EXITED_ON_TERM = {protocol.KIND: "failed", protocol.ERROR: "the job called sys.exit(143)"}
FINISHED_FINAL = {protocol.KIND: "finished", protocol.RESULT: None}


@pytest.mark.parametrize(("final", "status"), [
    (EXITED_ON_TERM, 256),  # its own TERM handler: sys.exit(143), an error as it unwinds
    (None, 143 << 8),  # os._exit(143) from its handler: no final at all
])
def test_an_attempt_phoenix_stopped_that_then_fails_is_interrupted_and_not_charged(final, status):
    """Found from outside: `phoenix stop` of a job whose own TERM handler called sys.exit(143)
    recorded `error` and used a retry (failed for good with retries=0)."""
    result = classify(final=final, status=status, interrupted=True, kill_reason=None, kill_detail=None)
    assert result.outcome == Outcome.INTERRUPTED
    if final is not None:
        assert result.reason == STOPPED_THEN_FAILED and result.error is not None
        assert result.error.endswith("the job then reported:\nthe job called sys.exit(143)")
    lease = classify(final=final, status=status, interrupted=True, kill_reason=None, kill_detail="lease lapsed")
    assert lease.outcome == Outcome.INTERRUPTED and (final is None or lease.error.startswith("lease lapsed; "))


def test_what_a_stop_does_not_change():
    # An error the job reported before the TERM was sent is its own: the stop only hurried its exit.
    before = classify(final=EXITED_ON_TERM, status=256, interrupted=True, kill_reason=None, kill_detail=None,
                      final_before_stop=True)
    assert before.outcome == Outcome.ERROR and before.error == "the job called sys.exit(143)"
    # A job that returns (or calls sys.exit(0)) after the TERM said it was done (docs/long-jobs.md).
    done = classify(final=FINISHED_FINAL, status=0, interrupted=True, kill_reason=None, kill_detail=None)
    assert done.outcome == Outcome.FINISHED and done.result_json == "null"
    # A cancel stays a cancel, whatever the job did on its TERM.
    cancelled = classify(final=EXITED_ON_TERM, status=256, interrupted=True, kill_reason=KillReason.CANCELLED,
                         kill_detail=None)
    assert cancelled.outcome == Outcome.CANCELLED
    # No stop asked: an error is the job's own, charged as ever.
    own = classify(final=EXITED_ON_TERM, status=256, interrupted=False, kill_reason=None, kill_detail=None)
    assert own.outcome == Outcome.ERROR


@pytest.mark.parametrize("reason", [KillReason.HEARTBEAT_TIMEOUT, KillReason.STALL_TIMEOUT, KillReason.MAX_RUNTIME,
                                    KillReason.OPERATOR])
def test_a_killed_job_that_errors_on_the_kills_term_is_still_killed_for_that_reason(reason):
    """Found from outside: a hung job whose TERM handler raised was recorded
    `error` with no reason, hiding the hang from status and the kill metrics."""
    detail = f"{reason}: 3.00 s"
    killed = classify(final=EXITED_ON_TERM, status=256, interrupted=False, kill_reason=reason, kill_detail=detail)
    assert (killed.outcome, killed.reason) == (Outcome.KILLED, str(reason))
    assert killed.error == f"{detail}; the job then reported:\nthe job called sys.exit(143)"
    # Its own error, reported before the kill's TERM: its own, as for a stop.
    before = classify(final=EXITED_ON_TERM, status=256, interrupted=False, kill_reason=reason, kill_detail=detail,
                      final_before_stop=True)
    assert before.outcome == Outcome.ERROR


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingStore:
    def __init__(self) -> None:
        self.writes: list[list[tuple[int, str]]] = []

    def save_progress(self, reported: list[tuple[int, str]]) -> None:
        self.writes.append(reported)


def test_progress_is_written_in_one_transaction_at_a_bounded_rate():
    clock, store = FakeClock(), RecordingStore()
    reported: dict[int, Attempt] = {}
    writer = ProgressWriter(lambda: store, reported, clock)  # type: ignore[arg-type,return-value]
    attempts = [Attempt(n, n, f"k{n}", "m:f", 1, 1000 + n, None, 0.0, 0.0, 0.0) for n in (1, 2)]
    assert writer.next_deadline() is None  # nothing reported: no wake-up
    for attempt in attempts:
        attempt.reported = [1, 10, None]
        reported[attempt.attempt_id] = attempt
    writer.write_if_due()
    assert store.writes == [[(1, "[1,10,null]"), (2, "[1,10,null]")]] and not reported
    attempts[0].reported = [2, 10, "x"]
    reported[1] = attempts[0]
    writer.write_if_due()  # too soon
    assert len(store.writes) == 1 and writer.next_deadline() == 100.0 + PROGRESS_WRITE_EVERY
    clock.now += PROGRESS_WRITE_EVERY
    writer.write_if_due()
    assert store.writes[-1] == [(1, json.dumps([2, 10, "x"], separators=(",", ":")))]


def test_a_version_3_journal_gets_the_long_jobs_columns_at_open(tmp_path):
    import re
    import sqlite3

    from phoenix.store.sqlite import _SCHEMA, APPLICATION_ID, SCHEMA_VERSION, Journal

    # The tables as version 3 had them: today's, without version 4's columns (and a comma left before ")").
    schema = "\n".join(line for line in _SCHEMA.splitlines()
                       if not re.match(r"\s+(checkpoint|checkpoint_at|checkpoint_attempt|checkpoint_seq|progress)\s",
                                       line))
    schema = re.sub(r",(\s*--[^\n]*)?\n\)", r"\1\n)", schema)
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path)
    for statement in schema.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema', '3')")
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    with Journal(path) as journal:
        job_id, _ = journal.submit("m:f", "{}", key="k")
        assert journal.checkpoint_of(job_id) is None
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # and on through later steps


# The largest numbers a message carries (ids and counts below 2**63) and the largest progress
# a job may report: every character of its note escaped to 12 bytes (a character outside the BMP).
_BIG = 2**63 - 1
LARGEST_NEWS = progress_value(-(2**62) - 0.5, -1.7976931348623157e308, "\U0001f600" * MAX_NOTE_CHARS)


def test_a_final_within_its_limit_fits_one_message_whatever_rides_with_it():
    """The sizing rule: the envelope's room covers the largest numbers and flags a child adds."""
    finished = protocol.encode(_BIG, _BIG, "finished", _BIG, _BIG, **{protocol.RESULT: "a" * 65534})
    largest_error = "\x00" * ((protocol.MAX_MESSAGE_BYTES - 1024) // 6 - 2)  # child/run.py's MAX_ERROR_JSON_BYTES
    failed = protocol.encode(_BIG, _BIG, "failed", _BIG, _BIG, error=largest_error, **{protocol.INTERRUPTED: True})
    checkpoint = protocol.encode(_BIG, _BIG, protocol.CHECKPOINT, _BIG, _BIG,
                                 **{protocol.SAVED: "\u00e9" * ((protocol.MAX_CHECKPOINT_BYTES - 2) // 6)})
    assert max(map(len, (finished, failed, checkpoint))) <= protocol.MAX_MESSAGE_BYTES


@pytest.mark.parametrize("note", ["\u00e9" * MAX_NOTE_CHARS, "\U0001f600" * MAX_NOTE_CHARS])
def test_progress_too_large_to_ride_on_a_full_final_goes_first_in_its_own_message(note):
    """Found from outside: a 64 KiB result (its limit) and a 200-character note (its limit) made a 66812-byte
    final, and the job failed with 'the job's result is not JSON'."""
    news = progress_value(1, 2, note)
    ahead, final = protocol.encode_final(3, 1, "finished", 9, 4, news, **{protocol.RESULT: "a" * 65534})
    assert ahead is not None and len(ahead) <= protocol.MAX_MESSAGE_BYTES >= len(final)
    first, last = protocol.decode(ahead), protocol.decode(final)
    assert first is not None and last is not None
    assert (first.kind, first.seq, first.body[protocol.PROGRESS]) == ("progress", 9, news)  # before the final
    assert (last.kind, last.seq, last.body[protocol.RESULT]) == ("finished", 10, "a" * 65534)
    assert protocol.PROGRESS not in last.body


def test_progress_rides_on_a_final_it_fits_and_the_largest_progress_fits_a_message_alone():
    alone, final = protocol.encode_final(3, 1, "finished", 9, 4, LARGEST_NEWS, **{protocol.RESULT: {"n": 1}})
    message = protocol.decode(final)
    assert alone is None and message is not None and message.seq == 9
    assert message.body[protocol.PROGRESS] == LARGEST_NEWS and message.body[protocol.RESULT] == {"n": 1}
    largest = protocol.encode(_BIG, _BIG, "progress", _BIG, _BIG, **{protocol.PROGRESS: LARGEST_NEWS})
    assert len(largest) <= protocol.MAX_MESSAGE_BYTES
    ahead, error = protocol.encode_final(3, 1, "failed", 9, 4, LARGEST_NEWS, error="\x00" * 10900,
                                         **{protocol.INTERRUPTED: True})
    assert ahead is not None and len(error) <= protocol.MAX_MESSAGE_BYTES  # a traceback near its limit too


def test_a_result_over_its_own_limit_is_still_refused_as_such_whatever_rides_with_it():
    with pytest.raises(protocol.ResultTooLarge, match="the job's result is 65537 bytes"):
        protocol.encode_final(3, 1, "finished", 9, 4, LARGEST_NEWS, **{protocol.RESULT: "a" * 65535})
