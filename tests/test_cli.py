"""The command line contract: bad input is one clear paragraph and exit 2,
and loses nothing already in the journal; status, submit and the pidfile
behave as scripts expect."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, phoenix_cli, wait_for


def error_of(result):
    assert result.stderr.startswith("phoenix: error: "), result.stderr
    return result.stderr


def test_app_that_does_not_import_is_named_with_its_error(state_dir, tmp_path):
    (tmp_path / "broken_app.py").write_text(
        "import phoenix\napp = phoenix.App()\nraise RuntimeError('half-deployed')\n")
    result = phoenix_cli("start", "broken_app:app", state_dir=state_dir, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2
    assert "importing module 'broken_app' raised RuntimeError: half-deployed" in error_of(result)
    assert "broken_app.py, line 3" in result.stderr


def test_missing_module_and_non_app_attribute(state_dir):
    result = phoenix_cli("start", "no_such_module_xyz:app", state_dir=state_dir)
    assert result.returncode == 2 and "there is no module 'no_such_module_xyz'" in error_of(result)
    result = phoenix_cli("start", "tests.apps.jobs:noop", state_dir=state_dir)
    assert result.returncode == 2 and "not a phoenix.App" in error_of(result)
    result = phoenix_cli("start", "tests.apps.jobs", state_dir=state_dir)
    assert result.returncode == 2 and "package.module:name" in error_of(result)


def test_submit_rejects_unknown_targets_and_bad_json_and_loses_nothing(state_dir):
    ok = phoenix_cli("submit", "tests.apps.jobs:noop", '{"n": 1}', "--key", "kept", state_dir=state_dir)
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"id": 1, "created": True}
    for args, expected in [
        (("tests.apps.jobs:nope", "{}"), "has no attribute 'nope'"),
        (("tests.apps.jobs:_record", "{}"), "is not a Phoenix job"),
        (("tests.apps.jobs:noop", "{not json"), "not valid JSON"),
    ]:
        result = phoenix_cli("submit", *args, state_dir=state_dir)
        assert result.returncode == 2, result
        assert expected in error_of(result)
    status = json.loads(phoenix_cli("status", "--json", state_dir=state_dir).stdout)
    assert [job["key"] for job in status["jobs"]] == ["kept"]


def test_same_key_twice_is_one_job_and_default_key_is_stable(state_dir):
    first = phoenix_cli("submit", "tests.apps.jobs:noop", '{"a": 1, "b": 2}', state_dir=state_dir)
    again = phoenix_cli("submit", "tests.apps.jobs:noop", '{"b": 2, "a": 1}', state_dir=state_dir)
    assert json.loads(first.stdout) == {"id": 1, "created": True}
    assert json.loads(again.stdout) == {"id": 1, "created": False}
    keyed = phoenix_cli("submit", "tests.apps.jobs:noop", '{"a": 1}', "--key", "k", state_dir=state_dir)
    keyed_again = phoenix_cli("submit", "tests.apps.jobs:noop", '{"a":1}', "--key", "k", state_dir=state_dir)
    assert json.loads(keyed.stdout)["id"] == json.loads(keyed_again.stdout)["id"] == 2
    # Other content under the same key: refused (tests/faults/test_truthful_exits.py).


def test_unwritable_state_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = phoenix_cli("start", "tests.apps.jobs:app", state_dir=blocker / "state")
    assert result.returncode == 2
    assert "is under a file, not a directory" in error_of(result)


def test_corrupt_journal_is_named_and_left_untouched(state_dir):
    state_dir.mkdir(mode=0o700)
    journal = state_dir / "journal.db"
    garbage = b"this is not a database" * 100
    journal.write_bytes(garbage)
    result = phoenix_cli("start", "tests.apps.jobs:app", state_dir=state_dir)
    assert result.returncode == 2
    assert str(journal) in error_of(result) and "move it aside" in result.stderr
    assert journal.read_bytes() == garbage


def test_bad_configuration_value(state_dir, tmp_path):
    (tmp_path / "phoenix.toml").write_text("workers = 'many'\n")
    result = phoenix_cli("start", "tests.apps.jobs:app", state_dir=state_dir, cwd=tmp_path,
                         env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert "workers in" in error_of(result) and "phoenix.toml must be an integer" in result.stderr


def test_status_json_while_stopped_and_running(master_factory, state_dir):
    never_ran = phoenix_cli("status", "--json", state_dir=state_dir)
    assert never_ran.returncode == 3 and "nothing has run here" in never_ran.stderr

    master = master_factory()
    master.submit("tests.apps.jobs:wait_forever", {"x": 1}, key="live")
    wait_for(lambda: master.jobs()["live"]["pid"], what="the job to run")
    running = phoenix_cli("status", "--json", state_dir=state_dir)
    assert running.returncode == 0
    report = json.loads(running.stdout)
    assert set(report["master"]) >= {"pid", "generation", "state", "started_at"}
    assert report["master"]["pid"] == master.pid and report["master"]["state"] == "running"
    (job,) = report["jobs"]
    assert set(job) >= {"id", "key", "target", "params", "state", "attempt", "pid", "last_beat_age",
                        "outcome", "result", "error"}
    assert job["state"] == "running" and job["attempt"] == 1 and job["params"] == {"x": 1}
    assert 0 <= job["last_beat_age"] < 1.0
    table = phoenix_cli("status", state_dir=state_dir)
    assert "live" in table.stdout and "running" in table.stdout

    master.stop()
    after = phoenix_cli("status", "--json", state_dir=state_dir)
    assert after.returncode == 3
    report = json.loads(after.stdout)
    assert report["master"]["state"] == "stopped"
    assert report["jobs"][0]["state"] == "pending"  # interrupted by the stop: runs again on the next start


def test_submit_to_a_running_master_starts_the_job(master_factory):
    master = master_factory()
    master.submit("tests.apps.jobs:noop", {"v": 7}, key="quick")
    jobs = master.wait_jobs_done(["quick"], timeout=5)
    assert jobs["quick"]["result"] == {"v": 7}


def test_second_start_on_a_live_state_dir_exits_1(master_factory, state_dir):
    master = master_factory()
    result = phoenix_cli("start", "tests.apps.jobs:app", state_dir=state_dir)
    assert result.returncode == 1
    assert f"already running on {state_dir} (pid {master.pid})" in error_of(result)
    assert (state_dir / "phoenix.pid").read_text().strip() == str(master.pid)


@pytest.mark.parametrize("kind", ["dead", "foreign"])
def test_stale_pidfile_is_replaced_with_a_warning(master_factory, state_dir, kind):
    state_dir.mkdir(mode=0o700)
    if kind == "dead":
        finished = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        stale = int(finished.stdout)
    else:
        stale = os.getpid()  # alive, but not a master: it holds no lock
    (state_dir / "phoenix.pid").write_text(f"{stale}\n")
    master = master_factory()
    assert (state_dir / "phoenix.pid").read_text().strip() == str(master.pid)
    log = master.log()
    assert f"stale_pidfile path={state_dir / 'phoenix.pid'} pid={stale}" in log
    assert ("no such process" if kind == "dead" else "is now another process") in log


def test_stop_modes(master_factory, state_dir):
    master = master_factory()
    master.submit("tests.apps.jobs:sleep", {"s": 0.5}, key="drained")
    wait_for(lambda: master.jobs()["drained"]["pid"], what="the job to start")
    result = phoenix_cli("stop", "--drain", state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    assert master.wait_exit() == 0
    assert master.jobs()["drained"]["state"] == "finished"  # drain let it finish
    assert phoenix_cli("stop", state_dir=state_dir).returncode == 3


def test_exit_when_done_reports_failure(master_factory, state_dir):
    phoenix_cli("submit", "tests.apps.jobs:noop", "{}", "--key", "fine", state_dir=state_dir)
    phoenix_cli("submit", "tests.apps.jobs:raises", "{}", "--key", "bad", state_dir=state_dir)
    master = master_factory("--exit-when-done", start=False).start(wait_ready=False)
    assert master.wait_exit() == 1
    assert "monitoring_complete finished=1 failed=1" in master.log()


def test_exit_when_done_with_nothing_to_do_and_no_slots(master_factory):
    # No slot ever frees up to look for work: the journal alone says it is done.
    master = master_factory("--exit-when-done", "--workers", "0", start=False).start(wait_ready=False)
    assert master.wait_exit() == 0
    assert "monitoring_complete finished=0 failed=0" in master.log()


def test_process_titles(master_factory):
    master = master_factory()
    master.submit("tests.apps.jobs:wait_forever", {}, key="titled")
    child = wait_for(lambda: master.jobs()["titled"]["pid"], what="the job to run")

    def title(pid):
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()

    assert title(child) == "phoenix: job titled attempt 1"
    wait_for(lambda: title(master.pid).startswith("phoenix: master gen 1 [tests.apps.jobs:app] 1 running 0 pending"),
             what=f"the master's title (now {title(master.pid)!r})")
    master.signal(signal.SIGTERM)
    assert master.wait_exit() == 0


@pytest.mark.parametrize("command", [["dashboard"], ["jobs"], ["status"], ["cancel", "k"], ["retry", "k"],
                                     ["store", "migrate"]])
def test_a_bad_store_url_is_refused_without_its_password(command: list[str], tmp_path: Path) -> None:
    result = phoenix_cli(*command, cwd=tmp_path, env={"PHOENIX_STORE": "postgresql://x:hunter2@[bad"})
    assert result.returncode == 2, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert result.stderr.startswith("phoenix: error: the store URL is not valid") and "x:***@[bad" in result.stderr


@pytest.mark.parametrize("command", [["jobs"], ["status"], ["store", "migrate"], ["cancel", "k"],
                                     ["start", "examples.feeds:app"]])
def test_a_store_url_without_psycopg_installed_is_one_line_naming_the_extra(command, tmp_path):
    """Phoenix installed without the postgres extra, given a PostgreSQL store: one line, never a traceback."""
    code = ("import sys; sys.modules['psycopg'] = None  # as if it were not installed\n"
            "from phoenix.cli.main import main; main()")
    result = subprocess.run([PYTHON, "-c", code, *command, "--store", "postgresql://127.0.0.1:1/x"],
                            capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={**os.environ, "PHOENIX_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "pip install 'phoenix-procmaster[postgres]'" in result.stderr
