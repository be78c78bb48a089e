"""A job's output is not the master's log: whatever a job (its process, its
subprocesses, its daemonised grandchildren) writes to stdout and stderr goes
to a file per attempt that the child writes itself, bounded in size, read
with `phoenix logs KEY [-f] [--attempt N]`. The master's log keeps only
records Phoenix wrote, in text as in JSON, across a replacement too."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest

from phoenix.child import output
from phoenix.linux.paths import StatePaths
from tests.conftest import wait_for
from tests.driver import PHOENIX, REPO, phoenix_cli
from tests.faults.conftest import report
from tests.faults.test_storage import fill

APP = "tests.apps.job_output:app"
TARGET = "tests.apps.job_output"
_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\[\d+\] ")


def finished(master, key: str, timeout: float = 30.0) -> dict:
    return wait_for(lambda: (job := master.jobs().get(key)) and job["state"] in ("finished", "failed") and job,
                    timeout, f"job {key} to end")


def logs(master, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*PHOENIX, "logs", *args, "--state-dir", str(master.state_dir)], cwd=REPO,
                          capture_output=True, timeout=60)


def logs_on_a_terminal(master, *args: str) -> bytes:
    """What `phoenix logs` writes when its stdout is a terminal (a pty)."""
    controller, terminal = pty.openpty()
    try:
        attributes = termios.tcgetattr(terminal)
        attributes[1] &= ~termios.OPOST  # the bytes as written: no newline translation by the terminal
        termios.tcsetattr(terminal, termios.TCSANOW, attributes)
        proc = subprocess.Popen([*PHOENIX, "logs", *args, "--state-dir", str(master.state_dir)], cwd=REPO,
                                stdout=terminal, stderr=subprocess.PIPE)
        os.close(terminal)
        terminal = -1
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=30) == 0
        return b"".join(chunks)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)


def assert_only_records(log: str, fmt: str) -> None:
    """Every line of the master's log is a record Phoenix wrote: a stamped
    line or an indented continuation (text), one JSON object (json)."""
    for line in log.splitlines():
        if fmt == "json":
            record = json.loads(line)  # raises on any line a job broke
            assert record["event"] != "forged", line
        else:
            assert _RECORD.match(line) or line.startswith("    "), f"not a Phoenix record: {line!r}"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_jobs_bytes_go_to_its_attempt_file_never_to_the_masters_log(master_factory, fmt):
    master = master_factory("--log-format", fmt, app=APP, start=False)
    master.start(wait_ready=False)
    master.wait_log('"event": "ready"' if fmt == "json" else "ready generation=", own=True)
    master.submit(f"{TARGET}:hostile", {"master": master.pid}, key="hostile")
    assert finished(master, "hostile")["state"] == "finished"
    master.stop()
    log = master.log()
    for forged in ("spawn pid=1 job=forged", '"event": "forged"', "no newline", "from-a-subprocess", "unclosed"):
        assert forged not in log, f"a job's output reached the master's log: {forged!r}"
    assert_only_records(log, fmt)
    shown = logs(master, "hostile")
    assert shown.returncode == 0, shown.stderr
    # To a pipe: the bytes as the job wrote them, both streams, its subprocess's too, in order.
    assert shown.stdout.startswith(f"2026-01-01T00:00:00.000 INFO    [{master.pid}] spawn pid=1 job=forged".encode())
    for part in (b"\x1b[2J", b"\xff\xfe", b'{"unclosed": ', b"from-a-subprocess\n", b"to-its-stderr\n"):
        assert part in shown.stdout
    assert shown.stdout.index(b"\xff\xfe") < shown.stdout.index(b"from-a-subprocess")
    # To a terminal: every control character but newline and tab shown escaped, nothing raw.
    on_terminal = logs_on_a_terminal(master, "hostile")
    assert b"\x1b" not in on_terminal and b"\\x1b[2J" in on_terminal and b"\\xff\\xfe" in on_terminal


@pytest.mark.parametrize("app", [
    "tests.apps.job_output",  # fork server; logging imported by the job
    "tests.apps.seeded_numpy",  # fork server; logging imported by the app, set up before the fork
    "tests.apps.user_code",  # children forked from the master
])
def test_a_jobs_logging_records_still_reach_the_masters_log_and_its_prints_do_not(master_factory, app):
    master = master_factory(app=f"{app}:app")
    master.submit(f"{app}:logs_and_prints", {"who": "w9"}, key="w9")
    assert finished(master, "w9")["state"] == "finished"
    master.wait_log("a record from job w9", timeout=15, what="the job's record in the master's log")
    log = master.log()
    assert "a print from job w9" not in log
    assert_only_records(log, "text")
    assert logs(master, "w9").stdout == b"a print from job w9\n"  # and no record there


def test_a_flood_is_kept_within_the_limit_and_never_slows_the_master(master_factory):
    limit = 64 * 1024
    master = master_factory(app=APP, env={"PHOENIX_JOB_OUTPUT_MAX_BYTES": str(limit)})
    job_id = master.submit(f"{TARGET}:flood", {"seconds": 3}, key="flood")
    path = Path(output.attempt_file(master.paths.output, job_id, 1))
    largest, answers = 0, []
    while master.jobs()["flood"]["state"] != "finished":
        if path.exists():
            largest = max(largest, path.stat().st_size)
        started = time.monotonic()
        master.live()  # the master answers while its job floods
        answers.append(time.monotonic() - started)
        assert len(answers) < 3000, "the flood did not end"
    size = path.stat().st_size
    text = path.read_bytes()
    written = master.jobs()["flood"]["result"]["written"]
    report("job output flood", written_mb=written // 2**20, limit_bytes=limit, kept_bytes=size,
           largest_seen_bytes=largest, slowest_status_s=round(max(answers), 3))
    assert size <= limit, size
    assert text.endswith(b"the last line\n"), "the job's last line was lost in a trim"
    shown = logs(master, "flood").stdout
    assert shown.startswith(b"[phoenix: ") and b"bytes of this attempt's earlier output dropped" in shown
    assert shown.endswith(b"the last line\n") and len(shown) <= limit + 200
    # Bounded while it ran, not only at its end: the file passes the limit
    # by at most what the job writes in one heartbeat interval (0.2 s here)
    # before a thread of the child watches it, then every 20 ms.
    assert largest < written / 4, "the file was not kept bounded while the job flooded"
    assert master.log_path.stat().st_size < 20_000, "the flood reached the master's log"


def test_a_job_killed_mid_flood_leaves_a_file_within_the_limit(master_factory):
    limit = 64 * 1024
    master = master_factory(app=APP, env={"PHOENIX_JOB_OUTPUT_MAX_BYTES": str(limit)})
    job_id = master.submit(f"{TARGET}:floods_until_killed", {}, key="killed")
    job = wait_for(lambda: (j := master.jobs().get("killed")) and j["state"] == "failed" and j, 30,
                   "max_runtime to kill the flood")
    assert job["outcome"] == "killed", job
    # Before: a killed child never trimmed its file at the end (8 MB left behind with a 1 MiB limit).
    size = Path(output.attempt_file(master.paths.output, job_id, 1)).stat().st_size
    assert size <= limit, size


def test_logs_follow_prints_lines_as_they_come_and_ends_with_the_attempt(master_factory):
    master = master_factory(app=APP)
    master.submit(f"{TARGET}:ticks", {"n": 30, "every": 0.1}, key="ticks")
    wait_for(lambda: master.jobs()["ticks"]["state"] == "running", what="the job to run")
    follower = subprocess.Popen([*PHOENIX, "logs", "ticks", "-f", "--state-dir", str(master.state_dir)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert first.startswith(b"tick "), first
        assert master.jobs()["ticks"]["state"] == "running", "the first line came only after the job ended"
        rest = follower.stdout.read()  # EOF: it ends by itself when the attempt does
        follower.wait(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, follower.stderr.read() if follower.stderr else None
    lines = (first + rest).decode().splitlines()
    assert lines[-1] == "tick 29" and lines == [f"tick {i}" for i in range(int(lines[0].split()[1]), 30)]
    assert master.jobs()["ticks"]["state"] == "finished"


def test_each_attempt_has_its_own_output_and_only_the_last_three_are_kept(master_factory):
    master = master_factory(app=APP)
    master.submit(f"{TARGET}:fails_until", {"succeed_at": 5}, key="flaky")
    assert finished(master, "flaky")["state"] == "finished"
    assert logs(master, "flaky").stdout == b"this is attempt 5\n"  # the latest by default
    assert logs(master, "flaky", "--attempt", "3").stdout == b"this is attempt 3\n"
    pruned = logs(master, "flaky", "--attempt", "2")
    assert pruned.returncode == 0 and pruned.stdout == b""
    assert b"no longer kept" in pruned.stderr
    missing = logs(master, "flaky", "--attempt", "9")
    assert missing.returncode == 1 and missing.stderr.count(b"\n") == 1 and b"no attempt 9" in missing.stderr
    unknown = logs(master, "nope")
    assert unknown.returncode == 1 and b"no job with key" in unknown.stderr
    job_id = master.jobs()["flaky"]["id"]
    assert sorted(p.name for p in master.paths.output.iterdir()) == [f"{job_id}.{n}.log" for n in (3, 4, 5)]


def test_prune_removes_the_output_of_the_jobs_it_deletes(master_factory):
    master = master_factory(app=APP)
    master.submit(f"{TARGET}:fails_until", {"succeed_at": 1}, key="gone")  # finishes at once, printing a line
    assert finished(master, "gone")["state"] == "finished"
    running_id = master.submit(f"{TARGET}:ticks", {"n": 100, "every": 0.1}, key="running")
    running = Path(output.attempt_file(master.paths.output, running_id, 1))
    wait_for(running.exists, what="the running job's output")
    result = phoenix_cli("prune", "--finished-before", "0s", "--json", state_dir=master.state_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output_files"] == 1
    assert [p.name for p in master.paths.output.iterdir()] == [running.name]  # a running job's is kept


def test_an_attempt_that_prints_nothing_leaves_no_file(master_factory):
    master = master_factory(app=APP)
    master.submit(f"{TARGET}:ticks", {"n": 0, "every": 0}, key="quiet")
    assert finished(master, "quiet")["state"] == "finished"
    assert not master.paths.output.exists() or not any(master.paths.output.iterdir())
    shown = logs(master, "quiet")
    assert shown.returncode == 0 and shown.stdout == b"" and b"left no output here" in shown.stderr


def test_output_survives_a_replacement_and_a_grandchild_writing_on_does_not_reach_the_log(master_factory, tmp_path):
    master = master_factory(app=APP)
    job_id = master.submit(f"{TARGET}:ticks", {"n": 40, "every": 0.05}, key="across")
    wait_for(lambda: master.jobs()["across"]["state"] == "running", what="the job to run")
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2", what="the replacement")
    pidfile = tmp_path / "writer.pid"
    master.submit(f"{TARGET}:leaves_a_writer", {"pidfile": str(pidfile)}, key="writer")
    assert finished(master, "across")["state"] == "finished"
    assert finished(master, "writer")["state"] == "finished"
    writer = int(pidfile.read_text())
    wait_for(lambda: not Path(f"/proc/{writer}").exists() or "Z" in Path(f"/proc/{writer}/stat").read_text()
             .rsplit(")", 1)[1].split()[0], what="the job's grandchild to end with its attempt")
    assert Path(output.attempt_file(master.paths.output, job_id, 1)).read_text() == "".join(
        f"tick {i}\n" for i in range(40))
    master.stop()
    assert "tick 1" not in master.log() and "grandchild-tick" not in master.log()
    assert_only_records(master.log(), "text")


def test_a_job_that_closes_its_output_and_reuses_the_numbers_keeps_its_own_file_intact(master_factory, tmp_path):
    master = master_factory(app=APP, env={"PHOENIX_JOB_OUTPUT_MAX_BYTES": "4096"})
    own = tmp_path / "own.bin"
    master.submit(f"{TARGET}:closes_its_output", {"own": str(own), "bytes": 100_000, "linger": 1.0}, key="closer")
    job = finished(master, "closer")
    assert job["state"] == "finished" and job["result"] == {"fd": 1}
    assert own.stat().st_size == 100_000, "Phoenix trimmed a file that was the job's own"


def test_job_output_max_bytes_is_checked(tmp_path):
    result = phoenix_cli("check", APP, env={"PHOENIX_JOB_OUTPUT_MAX_BYTES": "100"}, state_dir=tmp_path / "s")
    assert result.returncode == 2
    assert "job_output_max_bytes must be at least 4096" in result.stderr and result.stderr.count("\n") == 1


def test_a_full_disk_under_the_output_does_not_fail_a_job_that_prints(master_factory, small_filesystem):
    master = master_factory(app=APP, state=small_filesystem / "state")
    job_id = master.submit(f"{TARGET}:ticks", {"n": 40, "every": 0.05, "pad": 5000}, key="printer")
    path = Path(output.attempt_file(master.paths.output, job_id, 1))
    wait_for(lambda: path.exists() and path.stat().st_size > 0, what="the job's first lines")
    pid = next(iter(master.live()["running"].values()))["pid"]
    filler = fill(small_filesystem)
    try:
        # It prints on into a full disk to its end; its outcome waits (the journal is full too): the
        # master holds it unrecorded and the child keeps it, alive, until the journal takes it.
        wait_for(lambda: master.live()["master"].get("unrecorded_outcomes") == 1
                 or not Path(f"/proc/{pid}").exists(), what="the job to end and its outcome to wait")
    finally:
        filler.unlink()
    job = finished(master, "printer")
    # Before: a print raised OSError (ENOSPC) into the job, which failed.
    assert job["state"] == "finished" and job["attempt"] == 1, job
    master.stop()


def test_a_daemons_jobs_have_their_output_and_cannot_write_into_its_log(state_dir):
    """Under `start --daemon` the master's 0, 1 and 2 were closed, its log took
    fd 0, and every job inherited it: writable (a job forged records there),
    with sys.stdout and sys.stderr None (a print to stderr failed the job)."""
    paths = StatePaths(state_dir)
    started = phoenix_cli("start", APP, "--daemon", state_dir=state_dir)
    assert started.returncode == 0, started.stderr
    daemon = int(paths.pidfile.read_text())
    try:
        submitted = phoenix_cli("submit", f"{TARGET}:writes_everywhere", json.dumps({"master": daemon}),
                                "--key", "everywhere", state_dir=state_dir)
        assert submitted.returncode == 0, submitted.stderr
        job = wait_for(lambda: (j := _job(state_dir, "everywhere")) and j["state"] in ("finished", "failed") and j,
                       30, "the job to end")
        assert job["state"] == "finished", job.get("error")
        assert job["result"] == {"stdout_is_none": False, "wrote_to_stdin": False}
        shown = phoenix_cli("logs", "everywhere", state_dir=state_dir).stdout
        assert "to stdout" in shown and "to stderr" in shown
        assert "job=forged" not in (state_dir / "phoenix.log").read_text()
    finally:
        phoenix_cli("stop", state_dir=state_dir)
        wait_for(lambda: not Path(f"/proc/{daemon}").exists(), 30, "the daemon to exit")


def _job(state_dir: Path, key: str) -> dict | None:
    result = phoenix_cli("show", key, "--json", state_dir=state_dir)
    return json.loads(result.stdout) if result.returncode == 0 else None
