"""Exit codes and answers tell the truth (issue 10).

- A batch master (`--exit-when-done`) stopped before its batch is done exits
  128 + the signal number, as a shell reports a process a signal ended: a
  script's `phoenix start app --exit-when-done && next_step` does not carry on.
- Re-submitting a key with another target or other parameters is an error
  that says what differs (CLI: exit 1; App.submit: phoenix.KeyConflict);
  the same key with the same content stays a no-op. The check is atomic with
  the insert: of concurrent submitters of one key, exactly one creates it.
- A start that fails before it is ready records no generation.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
from pathlib import Path

import pytest

import phoenix
from phoenix.store.sqlite import Journal
from tests.conftest import phoenix_cli, wait_for

SLEEP = "tests.apps.jobs:sleep"
NOOP = "tests.apps.jobs:noop"


# -- (a) an interrupted batch does not exit 0 --------------------------------------------


def batch(master_factory, *jobs: tuple[str, object, str], workers: int = 8):
    """A `--exit-when-done` master started on jobs submitted beforehand (with
    nothing to do it would exit at once)."""
    master = master_factory("--exit-when-done", "--workers", str(workers), start=False)
    for target, params, key in jobs:
        master.submit(target, params, key=key)
    return master.start()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_batch_stopped_by_a_signal_exits_128_plus_the_signal(master_factory, state_dir, signum):
    master = batch(master_factory, (SLEEP, {"s": 30}, "long"))
    wait_for(lambda: master.jobs()["long"]["pid"], what="the job to run")
    master.signal(signum)
    assert master.wait_exit() == 128 + signum
    assert master.jobs()["long"]["state"] == "pending"  # nothing lost: the next start runs it
    assert f"exit pid={master.pid} code={128 + signum}" in master.log()


def test_a_drained_batch_with_work_left_exits_128_plus_sigquit(master_factory, state_dir, tmp_path):
    # One slot: "left" waits, and the drain leaves it. "running" ends once the drain began, however
    # loaded the machine (ended before, it would let "left" run: no work left).
    release = tmp_path / "release"
    master = batch(master_factory, (SLEEP, {"s": 60, "until": str(release)}, "running"), (NOOP, {}, "left"),
                   workers=1)
    wait_for(lambda: master.jobs()["running"]["pid"], what="the job to run")
    master.signal(signal.SIGQUIT)
    master.wait_log("drain", what="the drain to begin")
    release.touch()
    assert master.wait_exit() == 128 + signal.SIGQUIT
    jobs = master.jobs()
    assert jobs["running"]["state"] == "finished" and jobs["left"]["state"] == "pending"


def test_phoenix_stop_of_a_batch_counts_as_term(master_factory, state_dir):
    master = batch(master_factory, (SLEEP, {"s": 30}, "long"))
    wait_for(lambda: master.jobs()["long"]["pid"], what="the job to run")
    assert phoenix_cli("stop", state_dir=state_dir).returncode == 0
    assert master.wait_exit() == 128 + signal.SIGTERM


def test_a_batch_that_ended_before_the_stop_still_exits_0(master_factory, state_dir, tmp_path):
    """The exit code answers "did the batch finish?": a drain that lets the
    last job finish leaves nothing undone."""
    release = tmp_path / "release"  # (it ends once the drain began: else the batch exits 0 before the signal)
    master = batch(master_factory, (SLEEP, {"s": 60, "until": str(release)}, "last"))
    wait_for(lambda: master.jobs()["last"]["pid"], what="the job to run")
    master.signal(signal.SIGQUIT)
    master.wait_log("drain", what="the drain to begin")
    release.touch()
    assert master.wait_exit() == 0
    assert master.jobs()["last"]["state"] == "finished"


# -- (b) a key names one job ------------------------------------------------------------------


def _submit(state_dir: Path, target: str, params: object, key: str):
    return phoenix_cli("submit", target, json.dumps(params), "--key", key, state_dir=state_dir)


def test_resubmitting_a_key_with_other_content_is_an_error_that_says_what_differs(state_dir):
    first = _submit(state_dir, NOOP, {"n": 1}, "daily")
    assert first.returncode == 0 and json.loads(first.stdout)["created"] is True, first

    same = _submit(state_dir, NOOP, {"n": 1}, "daily")  # the same job again: a no-op
    assert same.returncode == 0 and json.loads(same.stdout) == {"id": 1, "created": False}, same

    other_params = _submit(state_dir, NOOP, {"n": 2}, "daily")
    assert other_params.returncode == 1, other_params
    assert other_params.stdout == ""
    error = other_params.stderr
    assert error.count("\n") == 1 and "Traceback" not in error, error  # one line
    assert "'daily'" in error and "with other parameters:" in error, error
    assert '{"n":1}' in error and '{"n":2}' in error and "another target" not in error, error

    other_target = _submit(state_dir, SLEEP, {"n": 1}, "daily")
    assert other_target.returncode == 1, other_target
    assert "with another target:" in other_target.stderr and "other parameters" not in other_target.stderr
    assert NOOP in other_target.stderr and SLEEP in other_target.stderr, other_target.stderr

    journal = Journal(state_dir / "journal.db")
    try:
        rows = journal.db.execute("SELECT key, target, params FROM jobs").fetchall()
    finally:
        journal.close()
    assert rows == [("daily", NOOP, '{"n":1}')]  # the recorded job is untouched


def test_parameters_compare_as_canonical_json(state_dir):
    assert _submit(state_dir, NOOP, {"a": 1, "b": [1, 2]}, "k").returncode == 0
    reordered = phoenix_cli("submit", NOOP, '{ "b": [1, 2],  "a": 1 }', "--key", "k", state_dir=state_dir)
    assert reordered.returncode == 0 and json.loads(reordered.stdout)["created"] is False, reordered


def test_app_submit_raises_key_conflict(state_dir):
    app = phoenix.App()
    assert app.submit(NOOP, {"n": 1}, key="k", state_dir=str(state_dir)) == 1
    assert app.submit(NOOP, {"n": 1}, key="k", state_dir=str(state_dir)) == 1
    with pytest.raises(phoenix.KeyConflict) as raised:
        app.submit(SLEEP, {"n": 3}, key="k", state_dir=str(state_dir))
    message = str(raised.value)
    assert NOOP in message and SLEEP in message and '{"n":1}' in message and '{"n":3}' in message


def test_concurrent_submitters_of_one_key_create_one_job_and_the_others_conflict(state_dir):
    state_dir.mkdir(parents=True)
    Journal(state_dir / "journal.db").close()
    submitters = 8
    barrier = threading.Barrier(submitters)
    outcomes: list[str] = []

    def submit(i: int) -> None:
        journal = Journal(state_dir / "journal.db")  # a connection of its own, as another process has
        try:
            barrier.wait()
            journal.submit(NOOP, json.dumps({"i": i}), "contended")
            outcomes.append(f"created {i}")
        except phoenix.KeyConflict:
            outcomes.append("conflict")
        finally:
            journal.close()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(submitters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes.count("conflict") == submitters - 1, outcomes
    (created,) = [o for o in outcomes if o.startswith("created")]
    journal = Journal(state_dir / "journal.db")
    try:
        (params,) = journal.db.execute("SELECT params FROM jobs WHERE key = 'contended'").fetchone()
    finally:
        journal.close()
    assert json.loads(params) == {"i": int(created.split()[1])}  # the winner's content, nobody else's


# -- (c) no generation for a start that never became ready -------------------------------------


def test_a_start_that_fails_before_ready_records_no_generation(master_factory, state_dir):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        failed = phoenix_cli("start", "tests.apps.jobs:app", "--metrics", str(port), state_dir=state_dir)
    finally:
        busy.close()
    assert failed.returncode == 2 and "cannot serve metrics" in failed.stderr, failed
    journal = Journal(state_dir / "journal.db")
    try:
        assert journal.meta("generation") is None
    finally:
        journal.close()
    stopped = phoenix_cli("status", "--json", state_dir=state_dir)
    assert json.loads(stopped.stdout)["master"]["generation"] is None

    master = master_factory()
    assert "ready generation=1 " in master.log()
    assert master.status()["master"]["generation"] == 1


def test_a_batch_submit_with_a_conflicting_key_records_none_of_its_jobs(state_dir):
    state_dir.mkdir()
    journal = Journal(state_dir / "journal.db")
    try:
        journal.submit(NOOP, '{"n":1}', "taken")
        with pytest.raises(phoenix.KeyConflict, match="'taken' already names job 1 with other parameters"):
            journal.submit_many([(NOOP, '{"n":2}', "new"), (NOOP, '{"n":1}', "taken"), (NOOP, '{"n":3}', "taken")])
        assert journal.db.execute("SELECT key FROM jobs").fetchall() == [("taken",)]
    finally:
        journal.close()


def test_a_stop_the_journal_cannot_judge_counts_as_unfinished():
    """Pure rule: with the journal unreadable, the batch is not known to be done."""
    import sqlite3

    from phoenix.master import exits

    def unreadable() -> dict[str, int]:
        raise sqlite3.OperationalError("disk I/O error")

    assert exits.stopped_batch(signal.SIGTERM, unreadable) == 143
    assert exits.stopped_batch(signal.SIGINT, lambda: {"pending": 0, "running": 0, "finished": 2, "failed": 1}) == 1
    assert exits.stopped_batch(signal.SIGQUIT, lambda: {"pending": 1, "running": 0, "finished": 0, "failed": 0}) == 131
