"""What an operator sees when something fails: `phoenix status`, the log
lines, the callbacks' arguments, import errors, and the small edges of the
CLI (reload with no master, a daemon on a busy state dir, metrics at 0)."""

import json
import urllib.request
from pathlib import Path

import pytest

import phoenix
from phoenix.app import AppError
from tests.conftest import REPO, wait_for
from tests.driver import phoenix_cli

FAILING = ("raises", "segfault", "exit3")


def json_master(master_factory, **kwargs):
    master = master_factory("--log-format", "json", start=False, **kwargs)
    master.start(wait_ready=False)
    master.wait_log('"event": "ready"', own=True)
    return master


def test_status_on_a_directory_where_nothing_ran_says_so_and_creates_nothing(tmp_path):
    state_dir = tmp_path / "nothing-here"
    for args in ((), ("--json",)):
        result = phoenix_cli("status", *args, state_dir=state_dir)
        assert result.returncode == 3, result
        assert f"no journal in {state_dir}: nothing has run here" in result.stderr, result.stderr
        assert result.stdout == ""
    assert not state_dir.exists()


def test_status_counts_jobs_lists_the_last_failures_and_both_uptimes(master_factory, state_dir):
    master = json_master(master_factory)
    for target in (*FAILING, "noop"):
        master.submit(f"tests.apps.jobs:{target}", {}, key=target)
    master.wait_jobs_done([*FAILING, "noop"])

    report = json.loads(phoenix_cli("status", "--json", state_dir=state_dir).stdout)
    assert report["counts"] == {"scheduled": 0, "pending": 0, "running": 0, "finished": 1, "failed": 3,
                                "cancelled": 0}
    failures = {f["key"]: f for f in report["recent_failures"]}
    assert set(failures) == set(FAILING)
    assert failures["segfault"]["reason"] == "SIGSEGV" and failures["segfault"]["max_rss_kb"] > 0
    assert "max RSS" not in failures["segfault"]["error"]  # in its own field, not in the error text
    assert failures["raises"]["error"].splitlines()[-1] == "ValueError: boom from the job"
    jobs = {job["key"]: job for job in report["jobs"]}
    assert jobs["exit3"]["reason"] == "exit code 3" and jobs["exit3"]["max_rss_kb"] > 0
    first = report["master"]
    assert first["first_started_at"] and first["since_reload"] is None and first["uptime_total"] >= 0

    text = phoenix_cli("status", state_dir=state_dir).stdout
    assert "jobs: pending 0  running 0  finished 1  failed 3" in text, text
    assert "last failures:" in text
    lines = text.splitlines()
    assert any("raises  error: ValueError: boom from the job" in line for line in lines), text
    assert any("segfault  crashed: SIGSEGV  max RSS" in line for line in lines), text
    assert any("exit3  exited: exit code 3" in line for line in lines), text

    # A reload keeps the master's first start and adds the time of the reload.
    assert phoenix_cli("reload", "--wait", state_dir=state_dir).returncode == 0
    again = json.loads(phoenix_cli("status", "--json", state_dir=state_dir).stdout)["master"]
    assert again["generation"] == 2 and again["first_started_at"] == first["first_started_at"]
    assert again["reloaded_at"] > first["first_started_at"]
    assert again["uptime_total"] >= again["since_reload"] >= 0
    assert "(last reload " in phoenix_cli("status", state_dir=state_dir).stdout


def test_failure_logs_carry_the_error_and_the_master_pid_and_on_failed_gets_the_rest(master_factory):
    master = json_master(master_factory)
    master.submit("tests.apps.jobs:flaky", {"fail_times": 1}, key="flaky")
    for target in FAILING:
        master.submit(f"tests.apps.jobs:{target}", {}, key=target)
    master.wait_jobs_done(["flaky", *FAILING])
    wait_for(lambda: len([c for c in master.callbacks() if c["kind"] == "failed"]) == 3, what="on_failed x3")

    records = [json.loads(line) for line in master.log().splitlines() if line.startswith("{")]
    assert all(r["master_pid"] == master.pid for r in records)
    retried = next(r for r in records if r["event"] == "attempt_failed" and r["job"] == "flaky")
    assert retried["pid"] != master.pid  # the child's, beside the master's
    assert retried["error"] == "RuntimeError: failing attempt 1", retried
    assert float(retried["retry_in"].rstrip("s")) >= 0
    failed = {r["job"]: r for r in records if r["event"] == "job_failed"}
    assert failed["raises"]["error"] == "ValueError: boom from the job"
    assert failed["segfault"]["reason"] == "SIGSEGV" and failed["segfault"]["max_rss_kb"] > 0

    calls = {c["key"]: c for c in master.callbacks() if c["kind"] == "failed"}
    assert calls["raises"]["payload"].splitlines()[-1] == "ValueError: boom from the job"
    assert calls["segfault"]["reason"] == "SIGSEGV" and calls["segfault"]["max_rss_kb"] > 0
    assert calls["segfault"]["payload"].splitlines()[-1] == "SIGSEGV"
    assert calls["exit3"]["reason"] == "exit code 3"


@pytest.fixture
def scratch(tmp_path):
    """A directory with broken apps, run as the current directory."""
    (tmp_path / "svc.py").write_text("import phoenix\napp = phoenix.App()\n")
    (tmp_path / "needs_dep.py").write_text("import phoenix\nimport not_installed_anywhere\napp = phoenix.App()\n")
    (tmp_path / "raises_at_import.py").write_text("import phoenix\nraise ValueError('bad setting')\n")
    return tmp_path


@pytest.mark.parametrize("app, expected", [
    ("svc.py:app", "did you mean 'svc:app'?"),
    ("svx:app", "there is no module 'svx'. Is the directory that holds it the current directory"),
    ("needs_dep:app", "module 'needs_dep' imports 'not_installed_anywhere', which is not installed"),
    ("raises_at_import:app", "importing module 'raises_at_import' raised ValueError: bad setting ("),
])
def test_import_errors_are_one_line_with_the_hint_that_fits(scratch, app, expected):
    state_dir = scratch / "state"
    result = phoenix_cli("start", app, state_dir=state_dir, cwd=scratch,
                         env={"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 2, result
    assert expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "importlib" not in result.stderr, result.stderr
    assert not state_dir.exists()  # a start that cannot load its app makes nothing


def test_import_error_traceback_only_at_debug_level(scratch):
    env = {"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    flag = phoenix_cli("start", "raises_at_import:app", "--log-level", "debug", state_dir=scratch / "s", cwd=scratch,
                       env=env)
    variable = phoenix_cli("submit", "raises_at_import:job", cwd=scratch, env={**env, "PHOENIX_LOG_LEVEL": "debug"})
    for result in (flag, variable):
        assert result.returncode == 2 and "Traceback" in result.stderr and "importlib" in result.stderr, result
        assert result.stderr.rstrip().splitlines()[-1].startswith("phoenix: error: cannot import")


def test_a_broken_release_is_one_reload_failed_record_and_one_prefix(master_factory, state_dir, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    module = code / "deployed_app.py"
    module.write_text((REPO / "tests" / "apps" / "replace.py").read_text())
    env = {"PYTHONPATH": f"{code}:{REPO}", "PYTHONDONTWRITEBYTECODE": "1"}
    master = json_master(master_factory, app="deployed_app:app", env=env)
    module.write_text(module.read_text() + "\nimport not_installed_anywhere\n")

    result = phoenix_cli("reload", "--wait", state_dir=state_dir, env=env)
    assert result.returncode == 1, result
    assert result.stderr.count("phoenix: error:") == 1 and result.stderr.count("reload failed") == 1, result.stderr
    assert "imports 'not_installed_anywhere'" in result.stderr
    master.wait_log('"reload_failed"')
    records = [json.loads(line) for line in master.log().splitlines() if line.startswith("{")]
    failed = [r for r in records if r["event"] == "reload_failed"]
    assert len(failed) == 1 and "imports 'not_installed_anywhere'" in failed[0]["error"], failed
    assert [r for r in records if r["level"] == "error"] == failed  # no second record with the rest


def test_reload_with_no_master_exits_3_like_stop(state_dir):
    for command in ("reload", "stop"):
        result = phoenix_cli(command, state_dir=state_dir)
        assert result.returncode == 3, result
        assert "no master is running on" in result.stderr


def test_a_daemon_on_a_busy_state_dir_says_why_without_a_class_name(master_factory, state_dir):
    master = master_factory()
    result = phoenix_cli("start", "tests.apps.jobs:app", "--daemon", state_dir=state_dir)
    assert result.returncode == 1, result
    assert f"a Phoenix master is already running on {state_dir} (pid {master.pid})" in result.stderr, result.stderr
    assert "AlreadyRunning" not in result.stderr and "phoenix.linux.pidfile" not in result.stderr, result.stderr


def test_labelled_metrics_are_exported_at_zero_before_their_first_sample(master_factory):
    master = master_factory("--metrics", "127.0.0.1:0")
    address = master.wait_log("metrics address=").split("metrics address=")[1].split()[0]
    text = urllib.request.urlopen(address, timeout=5).read().decode()
    for reason in ("heartbeat_timeout", "stall_timeout", "max_runtime", "operator"):
        assert f'phoenix_kills_total{{reason="{reason}"}} 0.0' in text, text
    for outcome in ("finished", "error", "killed", "crashed", "signalled", "exited", "lost", "interrupted"):
        assert f'phoenix_attempts_total{{outcome="{outcome}"}} 0.0' in text, text
    for state in ("pending", "running", "finished", "failed"):
        assert f'phoenix_jobs{{state="{state}"}}' in text, text


def test_client_submits_without_importing_the_job_code_and_wakes_the_master(master_factory, state_dir):
    master = master_factory()
    client = phoenix.Client(state_dir=str(state_dir))
    job_id, created = client.submit("tests.apps.jobs:noop", {"n": 1}, key="from-web")
    assert created and client.submit("tests.apps.jobs:noop", {"n": 1}, key="from-web") == (job_id, False)
    # Woken, the master starts it at once rather than at its next poll.
    master.wait_jobs_done(["from-web"], timeout=10)
    # Not imported: a target of code this process lacks is recorded all the same ...
    _, created = client.submit("code_only_the_workers_have:job", None, key="elsewhere")
    assert created
    # ... unless asked to check it, as `phoenix submit` does.
    with pytest.raises(AppError, match="there is no module 'code_only_the_workers_have'"):
        client.submit("code_only_the_workers_have:job", None, key="checked", check=True)
    with pytest.raises(AppError, match="did you mean 'svc:job'"):
        client.submit("svc.py:job")


def test_submit_help_says_what_it_imports_and_why():
    text = phoenix_cli("submit", "--help").stdout
    assert "imports TARGET's module" in " ".join(text.split()) and "phoenix.Client" in text


def test_client_without_a_state_dir_uses_the_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PHOENIX_STATE_DIR", str(tmp_path / "from-env"))
    assert phoenix.Client().paths.root == tmp_path / "from-env"
    monkeypatch.delenv("PHOENIX_STATE_DIR")
    assert phoenix.Client().paths.root == Path(tmp_path / ".phoenix")
    assert not (tmp_path / ".phoenix").exists()  # nothing made until a job is submitted


def test_a_field_of_several_lines_is_one_text_record_with_the_rest_indented():
    import logging

    from phoenix.log import TextFormatter

    record = logging.LogRecord("phoenix", logging.ERROR, __file__, 1, "%s", ("reload_failed",), None)
    record.phoenix_fields = {"reason": "preflight", "error": "check failed:\nSyntaxError\x1b[2J in x.py"}
    text = TextFormatter().format(record)
    first, *rest = text.splitlines()
    assert first.endswith('reload_failed reason=preflight error="check failed:"')
    assert rest == ["    SyntaxError\\x1b[2J in x.py"]  # below, indented, escaped: still one record


def test_a_rerun_held_by_the_restart_budget_says_so_in_its_log_line(master_factory):
    master = master_factory(env={"PHOENIX_RESTART_INTENSITY": "1", "PHOENIX_RESTART_PERIOD": "60"})
    for key in ("a", "b", "c"):
        master.submit("tests.apps.jobs:always_fails", {"k": key}, key=key)
    master.wait_log("attempt_failed", count=3)
    lines = [line for line in master.log().splitlines() if "attempt_failed" in line]
    held = [line for line in lines if "held_by=" in line]
    assert len(held) == 2, lines  # the first re-run fits the budget; the others wait for it, in order
    assert 'held_by="restart budget (1 re-runs per 60s), queued behind 0 other(s)"' in held[0]
    assert "queued behind 1 other(s)" in held[1]
    delays = [float(line.split("retry_in=")[1].split("s")[0]) for line in held]
    assert 55 < delays[0] <= 60 and 115 < delays[1] <= 120, held  # the real wait: a period per re-run ahead
