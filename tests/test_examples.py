"""The examples and the Procfile work as the README says."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from phoenix.linux import procfs
from tests.conftest import PYTHON, REPO, phoenix_cli, wait_for


def test_feeds_example_as_a_batch(state_dir):
    result = phoenix_cli("start", "examples.feeds:app", "--exit-when-done", state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    assert "monitoring_complete finished=6 failed=0" in result.stderr
    report = json.loads(phoenix_cli("status", "--json", state_dir=state_dir).stdout)
    assert {job["state"] for job in report["jobs"]} == {"finished"}
    assert {job["key"] for job in report["jobs"]} >= {"lwn", "python-insider"}


def test_seed_api_heartbeat_example(tmp_path):
    result = subprocess.run([PYTHON, "examples/heartbeat.py"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "EXAMPLE_SLEEP": "1"}, timeout=60)
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert log.count("Parameters: 1") == 2  # killed once, run again with the same parameters
    assert "reason=heartbeat_timeout" in log and " kill pid=" in log
    assert log.count("outcome=finished") == 3
    assert "monitoring_complete finished=3 failed=0" in log


def test_procfile_under_honcho(state_dir):
    env = {**os.environ, "PHOENIX_STATE_DIR": str(state_dir),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    honcho = subprocess.Popen([PYTHON, "-m", "honcho", "-f", str(REPO / "Procfile"), "-d", str(REPO), "start"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def finished_all():
            result = phoenix_cli("status", "--json", state_dir=state_dir)
            report = json.loads(result.stdout) if result.returncode in (0, 3) and result.stdout else None
            return (report and len(report["jobs"]) == 6
                    and all(j["state"] == "finished" for j in report["jobs"]) and report)

        report = wait_for(finished_all, timeout=30, what="the Procfile's master to finish the example jobs")
        master = report["master"]["pid"]
        # Exec form: no shell between the Procfile runner and Phoenix.
        runner = procfs.parent_pid(master)
        assert b"honcho" in Path(f"/proc/{runner}/cmdline").read_bytes()
        assert runner == honcho.pid or procfs.parent_pid(runner) == honcho.pid
        honcho.send_signal(signal.SIGTERM)
        output = honcho.communicate(timeout=30)[0].decode()
        assert "exit pid=" in output and "code=0" in output
        assert procfs.state(master) is None
    finally:
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)  # honcho passes it on to everything it started
            honcho.communicate(timeout=30)
