"""Promises at the edges of a deploy and a restart (issue: keep every promise
at the edges, items 1, 2, 3 and 5):

- an attempt lost while no master watched is re-run under its job's policy;
- a new image that cannot load the code after a passed preflight stays up,
  degraded: same pid, watching and recording the running jobs, starting none,
  owing callbacks, until a later reload loads good code; in fork mode the old
  master stays in charge;
- one configuration, resolved the same way by every command;
- a master that was itself not running gives its children fresh grace.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from phoenix.store.sqlite import Journal
from tests.apps.replace_tools import APP, HEARTBEAT_TIMEOUT, SLOW, UNTIL, alive, live, runs
from tests.conftest import REPO, phoenix_cli, wait_for


def _jobs(master) -> dict[str, dict]:
    return master.jobs()


def _pid_of(master, key: str) -> int:
    return wait_for(lambda: (j := master.jobs().get(key)) and j["state"] == "running" and j["pid"],
                    SLOW, f"job {key} to run")


# -- 1. lost means re-run ---------------------------------------------------------------


@pytest.mark.parametrize("retries, expected", [(2, "finished"), (0, "failed")])
def test_an_attempt_lost_while_no_master_watched_is_rerun_under_its_policy(master_factory, tmp_path, retries,
                                                                           expected):
    env = {"PHOENIX_TEST_RUNS": str(tmp_path / "runs.jsonl"), "PHOENIX_RETRIES": str(retries)}
    first = master_factory(app=APP, env=env)
    done = tmp_path / "done"
    first.submit(UNTIL, {"path": str(done)}, key="victim")
    child = _pid_of(first, "victim")
    first.signal(signal.SIGKILL)
    first.wait_exit(SLOW)
    os.kill(child, signal.SIGKILL)  # the OOM killer, an operator: gone without an outcome, unwatched
    wait_for(lambda: not alive(child), SLOW, "the child to vanish")
    done.touch()  # a re-run finishes at once

    second = master_factory(app=APP, env=env, start=False).start(wait_ready=False)
    second.wait_log("ready generation=2", timeout=SLOW)
    job = second.wait_jobs_done(["victim"], timeout=SLOW)["victim"]
    assert "outcome=lost" in second.log()
    assert job["state"] == expected, job
    attempts = [r["attempt"] for r in runs(tmp_path / "runs.jsonl")]
    assert attempts == ([1, 2] if retries else [1])


# -- 2. a deploy never leaves running jobs without a master ----------------------------------

BROKEN_AFTER_CHECK = {
    # The release changes between the preflight and the exec: only a replacement
    # image (it has PHOENIX_FDS) sees the broken code.
    "import_raises": "\nif os.environ.get('PHOENIX_FDS'):\n    raise RuntimeError('boom: the new release is broken')\n",
    "bad_config": ("\nif os.environ.get('PHOENIX_FDS'):\n"
                   "    app = phoenix.App(heartbeat_interval=5.0, heartbeat_timeout=1.0)\n"),
    "exits_at_import": "\nif os.environ.get('PHOENIX_FDS'):\n    sys.exit('boom: the new release is broken')\n",
}


def _deployed(tmp_path: Path) -> tuple[Path, str, dict[str, str]]:
    code = tmp_path / "code"
    code.mkdir()
    module = code / "deployed_app.py"
    original = (REPO / "tests" / "apps" / "replace.py").read_text()
    module.write_text(original)
    env = {"PYTHONPATH": f"{code}:{REPO}", "PYTHONDONTWRITEBYTECODE": "1",
           "PHOENIX_TEST_RUNS": str(tmp_path / "runs.jsonl")}
    return module, original, env


@pytest.mark.parametrize("breakage", sorted(BROKEN_AFTER_CHECK))
def test_a_new_image_that_cannot_load_runs_degraded_and_a_later_reload_recovers(master_factory, state_dir,
                                                                                tmp_path, breakage):
    module, original, env = _deployed(tmp_path)
    master = master_factory(app="deployed_app:app", env=env)
    submit = lambda target, params, key: phoenix_cli(  # noqa: E731 - the module is on the master's path only
        "submit", target, json.dumps(params), "--key", key, state_dir=state_dir, env=env)
    done = tmp_path / "done"
    assert submit("deployed_app:until", {"path": str(done)}, "long").returncode == 0
    pid = _pid_of(master, "long")

    module.write_text(original + BROKEN_AFTER_CHECK[breakage])
    result = phoenix_cli("reload", "--wait", "--timeout", str(SLOW), state_dir=state_dir, env=env)
    assert result.returncode == 1, result
    assert "reload failed" in result.stderr
    expected = "heartbeat_timeout" if breakage == "bad_config" else "boom: the new release is broken"
    assert expected in result.stderr, result.stderr

    status = live(state_dir)
    assert status is not None and status["master"]["pid"] == master.pid  # the same process holds the pid
    assert status["master"]["state"] == "degraded" and expected in status["master"]["degraded_reason"]
    assert master.proc.poll() is None and alive(pid)
    cli_status = phoenix_cli("status", state_dir=state_dir, env=env)
    assert cli_status.returncode == 0 and "degraded" in cli_status.stdout, cli_status
    assert expected in cli_status.stdout  # the reason, on the plain status too
    with Journal(state_dir / "journal.db", create=False) as journal:  # and in the store, for the dashboard
        assert expected in journal.meta("degraded_reason")

    # Degraded: it records what ends, starts nothing new, and owes the callbacks.
    assert submit("deployed_app:quick", {}, "queued").returncode == 0
    done.touch()
    jobs = master.wait_jobs_done(["long"], timeout=SLOW)
    assert jobs["long"]["state"] == "finished" and jobs["long"]["attempt"] == 1
    assert master.jobs()["queued"]["state"] == "pending"
    assert master.callbacks() == []

    module.write_text(original)  # the fix
    result = phoenix_cli("reload", "--wait", "--timeout", str(SLOW), state_dir=state_dir, env=env)
    assert result.returncode == 0, result
    assert live(state_dir)["master"]["pid"] == master.pid
    with Journal(state_dir / "journal.db", create=False) as journal:
        assert journal.meta("degraded_reason") is None
    assert master.wait_jobs_done(["queued"], timeout=SLOW)["queued"]["state"] == "finished"
    wait_for(lambda: sorted(c["key"] for c in master.callbacks()) == ["long", "queued"], SLOW,
             "the owed callback and the new one")
    assert [r["key"] for r in runs(tmp_path / "runs.jsonl")] == ["long", "queued"]
    assert " kill " not in master.log()


def test_fork_mode_new_master_that_cannot_load_leaves_the_old_one_in_charge(master_factory, state_dir, tmp_path):
    module, original, env = _deployed(tmp_path)
    master = master_factory("--reexec", "fork", app="deployed_app:app", env=env)
    done = tmp_path / "done"
    result = phoenix_cli("submit", "deployed_app:until", json.dumps({"path": str(done)}), "--key", "long",
                         state_dir=state_dir, env=env)
    assert result.returncode == 0, result
    pid = _pid_of(master, "long")
    module.write_text(original + BROKEN_AFTER_CHECK["import_raises"])
    result = phoenix_cli("reload", "--wait", "--timeout", str(SLOW), state_dir=state_dir, env=env)
    assert result.returncode == 1 and "boom: the new release is broken" in result.stderr, result
    status = live(state_dir)
    assert status["master"]["pid"] == master.pid and status["master"]["state"] == "running"
    assert (state_dir / "phoenix.pid").read_text().strip() == str(master.pid)
    done.touch()
    job = master.wait_jobs_done(["long"], timeout=SLOW)["long"]
    assert job["state"] == "finished" and job["attempt"] == 1 and alive(pid) is False
    assert " kill " not in master.log()


# -- 3. one configuration for every command ---------------------------------------------------

CONFIGURED_APP = """
import phoenix
app = phoenix.App(heartbeat_interval=0.5, state_dir={state_dir!r})

@app.job
def hello(params):
    return "hi"
"""


def test_app_settings_and_the_config_file_are_one_configuration_for_every_command(tmp_path, master_factory):
    code = tmp_path / "code"
    code.mkdir()
    app_state = tmp_path / "app-state"
    (code / "configured_app.py").write_text(CONFIGURED_APP.format(state_dir=str(app_state)))
    (code / "phoenix.toml").write_text("heartbeat_timeout = 0.8\n")  # valid only with the App's interval
    env = {"PYTHONPATH": f"{code}:{REPO}"}
    master = master_factory(app="configured_app:app", env=env, cwd=code, state=app_state)
    # status, submit (of the app's own target, no --state-dir: the App's state_dir), HUP and USR2 all agree.
    status = phoenix_cli("status", "--json", "--state-dir", str(app_state), env=env, cwd=code)
    assert status.returncode == 0, status.stderr
    submitted = phoenix_cli("submit", "configured_app:hello", "{}", "--key", "k", env=env, cwd=code)
    assert submitted.returncode == 0, submitted.stderr
    assert master.wait_jobs_done(["k"], timeout=SLOW)["k"]["state"] == "finished"
    assert not (code / ".phoenix").exists()  # nothing stranded in the default state dir
    master.signal(signal.SIGHUP)
    master.wait_log("config_reloaded", timeout=SLOW)
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2", timeout=SLOW)
    stop = phoenix_cli("stop", "--state-dir", str(app_state), env=env, cwd=code)
    assert stop.returncode == 0, stop.stderr
    assert master.wait_exit(SLOW) == 0


# -- 5. the master's own silence is not the children's -----------------------------------------


def test_a_frozen_master_kills_no_healthy_child_when_it_wakes(master_factory, state_dir, tmp_path):
    # tests.apps.replace's own heartbeat_timeout (2 s): generous enough that a
    # loaded test machine kills nobody, while the freeze below is three of it.
    master = master_factory(app=APP)
    done = tmp_path / "done"
    keys = [f"j{n}" for n in range(12)]
    for key in keys:
        master.submit(UNTIL, {"path": str(done)}, key=key)
    wait_for(lambda: all((j := master.jobs().get(k)) and j["state"] == "running" for k in keys), SLOW,
             "every job to run")
    master.signal(signal.SIGSTOP)  # the fault: a master that does not run for 3 heartbeat timeouts
    try:
        stopped = os.times().elapsed
        wait_for(lambda: os.times().elapsed - stopped >= 3 * HEARTBEAT_TIMEOUT, 15.0,
                 "three heartbeat timeouts to pass", 0.1)
    finally:
        master.signal(signal.SIGCONT)
    master.wait_log("master_was_away", timeout=SLOW)
    done.touch()
    jobs = master.wait_jobs_done(keys, timeout=SLOW)
    assert all(jobs[k]["state"] == "finished" and jobs[k]["attempt"] == 1 for k in keys), jobs
    assert " kill " not in master.log()


def test_a_module_that_exits_at_import_fails_the_preflight(tmp_path):
    (tmp_path / "quitter.py").write_text("import sys\nsys.exit(0)\n")
    result = phoenix_cli("check", "quitter:app", cwd=tmp_path, env={"PYTHONPATH": f"{tmp_path}:{REPO}"})
    assert result.returncode == 2, result  # not 0: a release that exits at import must not pass
    assert "called sys.exit(0) while being imported" in result.stderr
