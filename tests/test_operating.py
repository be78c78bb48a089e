"""Operating Phoenix: every signal, metrics, JSON logs (the timeline page: tests/test_timeline.py)."""

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import phoenix_cli, wait_for


def test_hup_reloads_configuration_and_logs_what_changed(master_factory, tmp_path):
    config = tmp_path / "phoenix.toml"
    config.write_text("workers = 2\n")
    master = master_factory("--config", str(config))
    assert master.status()["master"]["workers"] == 2
    config.write_text("workers = 5\nheartbeat_timeout = 4.0\n")
    master.signal(signal.SIGHUP)
    master.wait_log("config_reloaded")
    assert "workers:2->5" in master.log() and "heartbeat_timeout:1.0->4.0" in master.log()
    assert master.status()["master"]["workers"] == 5
    config.write_text("workers = 'lots'\n")
    master.signal(signal.SIGHUP)
    master.wait_log("reload_config_failed")
    assert master.status()["master"]["workers"] == 5  # a bad edit changes nothing


def test_ttin_and_ttou_change_slots_never_below_zero(master_factory):
    master = master_factory("--workers", "1")
    master.submit("tests.apps.jobs:wait_forever", {"n": 1}, key="a")
    wait_for(lambda: master.jobs()["a"]["state"] == "running", what="a running")
    master.submit("tests.apps.jobs:wait_forever", {"n": 2}, key="b")
    master.signal(signal.SIGTTIN)
    wait_for(lambda: master.jobs()["b"]["state"] == "running", what="b running in the added slot")
    for count in (1, 2, 3):  # one at a time: the kernel merges a signal sent while one is pending
        master.signal(signal.SIGTTOU)
        master.wait_log("workers workers=", count=count + 1)
    assert master.log().count("workers workers=0") == 2
    assert master.status()["master"]["workers"] == 0
    assert {j["state"] for j in master.jobs().values()} == {"running"}  # removed slots let jobs run on


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_term_and_int_stop_and_put_interrupted_jobs_back(master_factory, signum):
    master = master_factory()
    master.submit("tests.apps.jobs:wait_forever", {}, key="w")
    wait_for(lambda: master.jobs()["w"]["pid"], what="the job to run")
    master.signal(signum)
    assert master.wait_exit() == 0
    job = master.jobs()["w"]
    assert job["state"] == "pending" and job["outcome"] == "interrupted"
    restarted = master_factory("--exit-when-done", start=False)
    restarted.start()
    wait_for(lambda: restarted.jobs()["w"]["state"] == "running" and restarted.jobs()["w"]["attempt"] == 2,
             what="the interrupted job to run again")


def test_a_second_term_keeps_the_kill_grace_a_second_int_stops_at_once(master_factory, tmp_path):
    """A repeated TERM (a kubelet's, a second `phoenix stop`) once SIGKILLed every job inside its
    kill_grace; only SIGINT while stopping (a second Ctrl-C) is the fast path (docs/operating.md)."""
    master = master_factory("--config", str(_config(tmp_path, "kill_grace = 60\n")))
    master.submit("tests.apps.jobs:ignores_term", {}, key="stubborn")
    pid = wait_for(lambda: master.jobs()["stubborn"]["pid"], what="the job to run")
    master.signal(signal.SIGTERM)
    master.wait_log("stop mode=term")
    master.signal(signal.SIGTERM)
    master.wait_log("stop_under_way")
    assert "stop_now" not in master.log() and master.jobs()["stubborn"]["pid"] == pid
    os.kill(pid, 0)  # alive, inside its kill_grace
    master.signal(signal.SIGINT)
    master.wait_log("stop_now")
    assert master.wait_exit(timeout=10) == 0


def test_quit_drains(master_factory):
    master = master_factory()
    master.submit("tests.apps.jobs:sleep", {"s": 0.5}, key="running")
    wait_for(lambda: master.jobs()["running"]["pid"], what="the job to run")
    master.signal(signal.SIGQUIT)
    master.wait_log("drain")
    master.submit("tests.apps.jobs:noop", {}, key="late")
    assert master.wait_exit() == 0
    jobs = master.jobs()
    assert jobs["running"]["state"] == "finished"
    assert jobs["late"]["state"] == "pending"  # nothing new started while draining


def test_usr1_reopens_the_log_file(master_factory, tmp_path):
    log_file = tmp_path / "phoenix.log"
    master = master_factory("--log-file", str(log_file), start=False)
    master.start(wait_ready=False)
    wait_for(lambda: log_file.exists() and "ready generation=" in log_file.read_text(), what="the log file")
    rotated = tmp_path / "phoenix.log.1"
    log_file.rename(rotated)
    master.signal(signal.SIGUSR1)
    wait_for(lambda: log_file.exists() and "logs_reopened" in log_file.read_text(), what="a new log file")
    assert "logs_reopened" not in rotated.read_text()


def test_json_logs(master_factory):
    master = master_factory("--log-format", "json", start=False).start(wait_ready=False)
    master.wait_log('"event": "ready"')
    master.submit("tests.apps.jobs:noop", {}, key="j")
    master.wait_jobs_done(["j"])
    master.wait_log('"event": "complete"')
    lines = [json.loads(line) for line in master.log().splitlines() if line.startswith("{")]
    spawn = next(line for line in lines if line["event"] == "spawn")
    assert spawn["job"] == "j" and spawn["attempt"] == 1 and isinstance(spawn["pid"], int)


def test_metrics_are_served_on_loopback(master_factory):
    master = master_factory("--metrics", "127.0.0.1:0")
    address = master.wait_log("metrics address=").split("metrics address=")[1].split()[0]
    assert address.startswith("http://127.0.0.1:")
    master.submit("tests.apps.jobs:hang_first", {"s": 0.1}, key="h")
    master.wait_jobs_done(["h"])
    wait_for(lambda: master.jobs()["h"]["state"] == "finished", what="h")

    def scrape():
        text = urllib.request.urlopen(address, timeout=5).read().decode()
        return 'phoenix_attempts_total{outcome="finished"} 1.0' in text and text

    text = wait_for(scrape, what="the finished attempt in the metrics")
    assert 'phoenix_kills_total{reason="heartbeat_timeout"} 1.0' in text
    assert 'phoenix_attempts_total{outcome="killed"} 1.0' in text
    assert "phoenix_heartbeats_received_total" in text
    assert "phoenix_hang_detection_delay_seconds_count 1.0" in text
    assert 'phoenix_jobs{state="finished"}' in text
    assert "phoenix_master_generation 1.0" in text


def test_bad_metrics_address(state_dir):
    result = phoenix_cli("start", "tests.apps.jobs:app", "--metrics", "localhost:http", state_dir=state_dir)
    assert result.returncode == 2 and "--metrics wants HOST:PORT" in result.stderr


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "phoenix.toml"
    path.write_text(text)
    return path


def _on_a_terminal(command, env=None, timeout=30):
    """Run `command` on a real pseudo-terminal (util-linux `script`) and return what it printed."""
    shell = " ".join(command)
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return subprocess.run(["script", "-qec", shell, "/dev/null"], capture_output=True, text=True,
                          env={**environment, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL).stdout


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script for a pseudo-terminal")
def test_status_table_on_a_terminal_and_watch(master_factory, state_dir):
    import sys

    master = master_factory()
    master.submit("tests.apps.jobs:wait_forever", {}, key="watched")
    wait_for(lambda: master.jobs()["watched"]["last_beat_age"] is not None, what="the job's first beat")
    status = [sys.executable, "-m", "phoenix", "status", "--state-dir", str(state_dir)]
    table = _on_a_terminal(status, env={"NO_COLOR": "1"})
    assert "┃" in table or "│" in table  # rich's table borders: a terminal gets the rich table
    assert "watched" in table and "slots 1/8" in table
    # NO_COLOR: rich keeps bold and italic but uses no colour (SGR 30-38, 40-48).
    colour = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|4[0-8])(?:;[0-9;]*)?m")
    assert not colour.search(table), table
    assert colour.search(_on_a_terminal(status, env={"TERM": "xterm-256color"}))  # and colour without it
    piped = phoenix_cli("status", state_dir=state_dir).stdout
    assert "│" not in piped and "watched" in piped  # plain columns when piped
    # --watch redraws in place until interrupted; `timeout -s INT` plays Ctrl-C.
    watched = _on_a_terminal(["timeout", "-s", "INT", "2", *status, "--watch", "0.2"], env={"NO_COLOR": "1"})
    assert watched.count("watched") >= 3  # several refreshes of the same table
