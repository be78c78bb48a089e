"""The `otel` setting on real masters: off, no opentelemetry module is loaded
in the master or in a job's child; on, each attempt's end makes one span on
the provider the app set up, with the job's attributes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.driver import REPO, phoenix_cli


def _run_until_done(master_factory, state_dir: Path, env: dict[str, str], *jobs: tuple[str, str]) -> None:
    master = master_factory("--exit-when-done", app="tests.apps.traced:app", env=env, start=False)
    for target, key in jobs:
        submitted = phoenix_cli("submit", f"tests.apps.traced:{target}", "null", "--key", key,
                                state_dir=state_dir, env=env)
        assert submitted.returncode == 0, submitted.stderr
    master.start(wait_ready=False)
    assert master.wait_exit() in (0, 1)


def test_off_nothing_of_opentelemetry_is_imported_in_the_master_or_a_child(master_factory, state_dir, tmp_path):
    probe = tmp_path / "probe.json"
    env = {"PHOENIX_OTEL": "false", "PHOENIX_TEST_PROBE": str(probe)}
    _run_until_done(master_factory, state_dir, env, ("probe", "p"))
    assert json.loads(probe.read_text()) == {"child": [], "master": []}


def test_on_each_attempt_ends_in_a_span_with_the_jobs_attributes(master_factory, state_dir, tmp_path):
    spans_file, probe = tmp_path / "spans.jsonl", tmp_path / "probe.json"
    env = {"PHOENIX_OTEL": "true", "PHOENIX_TEST_PROBE": str(probe), "PHOENIX_TEST_SPANS": str(spans_file)}
    _run_until_done(master_factory, state_dir, env, ("probe", "ok"), ("fails", "bad"))
    assert "opentelemetry.trace" in json.loads(probe.read_text())["master"]  # on: the check above can fail
    spans = {span["attributes"]["phoenix.job.key"]: span
             for span in map(json.loads, spans_file.read_text().splitlines())}
    assert set(spans) == {"ok", "bad"}
    ok, bad = spans["ok"], spans["bad"]
    assert ok["name"] == "phoenix.attempt tests.apps.traced:probe"
    assert ok["attributes"]["phoenix.attempt.number"] == 1
    assert ok["attributes"]["phoenix.attempt.outcome"] == "finished"
    assert ok["attributes"]["phoenix.node"]
    assert ok["status"]["status_code"] == "UNSET"
    assert bad["attributes"]["phoenix.attempt.outcome"] == "error"
    assert bad["status"]["status_code"] == "ERROR"


def test_on_without_the_extra_is_refused_in_one_line_naming_it():
    """`python -S`: no site-packages, so no OpenTelemetry (the config module needs only the standard library)."""
    check = "from phoenix.config import Config, ConfigError\ntry:\n    Config(otel=True).validate()\n" \
            "except ConfigError as exc:\n    print(exc)\n"
    result = subprocess.run([sys.executable, "-S", "-c", check], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("otel is on but OpenTelemetry is not installed: "
                             "pip install 'phoenix-procmaster[otel]', or set otel = false\n")
