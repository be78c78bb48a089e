"""Answers tell the truth (issue 18, class 5, and the smaller items found with
it): a documented limit is the limit a user meets, a damaged journal is
refused by every command that writes, and every cancelled job gets the
`on_failed` the README promises."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from phoenix.linux.paths import StatePaths
from phoenix.store.sqlite import Journal
from tests.conftest import REPO, Master, phoenix_cli, wait_for

APP = "tests.apps.truths:app"
TRUTHS = "tests.apps.truths"
PAGE = 4096  # SQLite's page size in the journal


# -- a result's limit is the result's own: 64 KiB of JSON ---------------------------------------


def test_a_result_of_exactly_64_kib_of_json_finishes_and_one_byte_more_is_refused_with_its_size(master_factory):
    master: Master = master_factory(app=APP)
    sizes = {"at-limit": 65536, "seen-refused": 65476, "one-over": 65537}
    for key, size in sizes.items():
        master.submit(f"{TRUTHS}:sized_result", {"bytes": size}, key=key)
    jobs = master.wait_jobs_done(list(sizes))
    assert jobs["at-limit"]["state"] == "finished", jobs["at-limit"]["error"]
    assert jobs["seen-refused"]["state"] == "finished", jobs["seen-refused"]["error"]
    results = {c["key"]: c for c in master.callbacks() if c["kind"] == "finished"}
    assert set(results) == {"at-limit", "seen-refused"}
    over = jobs["one-over"]
    assert over["outcome"] == "error"
    assert "the job's result is 65537 bytes of JSON" in over["error"]
    assert "65536-byte limit of a result" in over["error"]


def test_a_long_error_of_wide_characters_is_cut_to_fit_and_recorded_as_the_jobs_error(master_factory):
    """16,000 characters of traceback fit in a message as ASCII, not as
    escaped non-ASCII (6 or 12 bytes each): the job's error was lost (the child
    exited 70, outcome `exited`). It is cut in the middle, its end kept."""
    master: Master = master_factory(app=APP)
    master.submit(f"{TRUTHS}:raises_wide", {"chars": 16_000}, key="euro")
    master.submit(f"{TRUTHS}:raises_wide", {"chars": 20_000, "char": "\U0001F600"}, key="emoji")
    jobs = master.wait_jobs_done(["euro", "emoji"])
    for key, char in (("euro", "€"), ("emoji", "\U0001F600")):
        job = jobs[key]
        assert job["outcome"] == "error", (key, job["outcome"], job["reason"])
        assert "[... traceback cut ...]" in job["error"]
        assert job["error"].rstrip().endswith(char * 100), job["error"][-200:]  # the end: the exception's line


# -- a damaged journal is refused by every command that writes ----------------------------------


def damaged_journal(master_factory, state_dir: Path) -> Path:
    """A journal a master has run jobs from (one failed and one pending left
    for retry and cancel), with random bytes over pages that a submit does
    not read: the table of attempts, not the jobs' key index."""
    StatePaths(state_dir).ensure()
    with Journal(state_dir / "journal.db") as journal:
        journal.submit_many((f"{TRUTHS}:sized_result", json.dumps({"bytes": 2, "pad": "x" * 3000}), f"job-{i}")
                            for i in range(30))
    assert master_factory("--exit-when-done", app=APP).wait_exit() == 0
    path = state_dir / "journal.db"
    with Journal(path) as journal:
        journal.submit(f"{TRUTHS}:sleep", "{}", "still-pending")
        journal.db.execute("UPDATE jobs SET state = 'failed' WHERE key = 'job-0'")
        journal.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        attempts_root = journal.db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'attempts'").fetchone()[0]
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, os.urandom(PAGE), (attempts_root - 1) * PAGE)  # the attempts table's root page
    finally:
        os.close(fd)
    return path


@pytest.mark.parametrize("command", [
    ("submit", f"{TRUTHS}:sleep", '{"new": 1}', "--key", "new"),
    ("cancel", "still-pending"),
    ("retry", "job-0"),
    ("retry", "--failed"),
    ("prune", "--finished-before", "0s", "--failed-before", "0s"),
])
def test_every_writing_command_refuses_a_damaged_journal_and_writes_nothing(master_factory, state_dir, command):
    path = damaged_journal(master_factory, state_dir)
    status = phoenix_cli("status", state_dir=state_dir)
    assert status.returncode == 2 and "damaged" in status.stderr, status.stderr  # what status says of it
    before = {p.name: p.read_bytes() for p in state_dir.iterdir() if p.is_file() and p.name != "phoenix.lock"}
    result = phoenix_cli(*command, state_dir=state_dir)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phoenix: error: "), result.stderr
    assert str(path) in lines[0] and "damaged" in lines[0] and "move it aside" in lines[0], lines[0]
    after = {p.name: p.read_bytes() for p in state_dir.iterdir() if p.is_file() and p.name != "phoenix.lock"}
    assert after == before, f"`phoenix {command[0]}` wrote into a damaged journal"


# -- every cancelled job gets exactly one on_failed ----------------------------------------------


def failed_callbacks(master: Master) -> dict[str, list[dict[str, object]]]:
    calls: dict[str, list[dict[str, object]]] = {}
    for call in master.callbacks():
        if call["kind"] == "failed":
            calls.setdefault(str(call["key"]), []).append(call)
    return calls


def test_every_cancelled_job_gets_one_on_failed_pending_running_or_with_no_master(master_factory, state_dir):
    """Cancelled while pending (never ran, or waiting in its backoff after a
    failure), while running, and with no master running: each gets exactly
    one on_failed, with job.outcome "cancelled"."""
    master: Master = master_factory("--workers", "2", app=APP)
    master.submit(f"{TRUTHS}:sleep", {"seconds": 60}, key="running-1")
    master.submit(f"{TRUTHS}:sleep", {"seconds": 60}, key="running-2")
    wait_for(lambda: all(master.jobs()[k]["state"] == "running" and master.jobs()[k]["pid"]
                         for k in ("running-1", "running-2")), what="two jobs to run")
    master.submit(f"{TRUTHS}:sleep", {"seconds": 60}, key="pending-1")  # no slot free: stays pending
    master.submit(f"{TRUTHS}:sleep", {"seconds": 60}, key="pending-2")
    result = phoenix_cli("cancel", "pending-1", "running-1", "pending-2", state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: {"pending-1", "pending-2", "running-1"} <= set(failed_callbacks(master)),
             what="on_failed for the cancelled jobs")
    master.stop()
    assert master.wait_exit() == 0

    # With no master running: cancelled in the journal, on_failed owed to the next master.
    with Journal(state_dir / "journal.db") as journal:
        journal.submit(f"{TRUTHS}:sleep", "{}", "pending-offline")
    offline = phoenix_cli("cancel", "pending-offline", state_dir=state_dir)
    assert offline.returncode == 0, offline.stderr
    again: Master = master_factory("--workers", "2", app=APP)
    wait_for(lambda: "pending-offline" in failed_callbacks(again), what="on_failed owed while no master ran")
    calls = failed_callbacks(again)
    assert set(calls) == {"pending-1", "pending-2", "running-1", "pending-offline"}  # running-2 was only stopped
    for key in ("pending-1", "pending-2", "running-1", "pending-offline"):
        assert len(calls[key]) == 1, (key, calls[key])
        assert calls[key][0]["outcome"] == "cancelled", calls[key]
        assert str(calls[key][0]["payload"]).startswith("cancelled by the operator (phoenix cancel)")
    jobs = again.jobs()
    assert all(jobs[k]["state"] == "cancelled" for k in ("pending-1", "pending-2", "running-1", "pending-offline"))


def test_a_cancel_under_way_at_a_replacement_is_finished_by_the_new_image(master_factory, state_dir, tmp_path):
    """The cancel's TERM is ignored, and the master is replaced (SIGUSR2)
    before its KILL is due: the new image, which has no memory of the old
    one's timers, reads the cancel from the journal and ends the job as
    cancelled (one on_failed), instead of letting it finish or run again."""
    config = tmp_path / "phoenix.toml"
    config.write_text("kill_grace = 60\n")  # the old image's KILL would come too late to matter
    master: Master = master_factory("--config", str(config), app=APP)
    master.submit(f"{TRUTHS}:ignores_term", {"seconds": 15}, key="stubborn")
    wait_for(lambda: master.jobs()["stubborn"]["state"] == "running" and master.jobs()["stubborn"]["pid"],
             what="the job to run")
    result = phoenix_cli("cancel", "stubborn", state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    master.wait_log("kill pid=", what="the cancel's TERM")
    config.write_text("kill_grace = 1\n")  # what the new image reads
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2", timeout=30)
    job = wait_for(lambda: (j := master.jobs()["stubborn"])["state"] not in ("pending", "running") and j,
                   timeout=20, what="the cancelled job to end")
    assert (job["state"], job["outcome"]) == ("cancelled", "cancelled"), job
    wait_for(lambda: "stubborn" in failed_callbacks(master), what="on_failed of the cancelled job")
    calls = failed_callbacks(master)["stubborn"]
    assert len(calls) == 1 and calls[0]["outcome"] == "cancelled", calls
    assert not [c for c in master.callbacks() if c["kind"] == "finished"]


def test_a_cancel_under_way_when_the_master_is_killed_is_finished_by_the_next_master(master_factory, state_dir,
                                                                                     tmp_path):
    """As above, across a SIGKILL of the master and a new `phoenix start`,
    which adopts the job through its pidfd and finishes the cancel."""
    config = tmp_path / "phoenix.toml"
    config.write_text("kill_grace = 60\n")
    master: Master = master_factory("--config", str(config), app=APP)
    master.submit(f"{TRUTHS}:ignores_term", {"seconds": 15}, key="stubborn")
    wait_for(lambda: master.jobs()["stubborn"]["state"] == "running" and master.jobs()["stubborn"]["pid"],
             what="the job to run")
    assert phoenix_cli("cancel", "stubborn", state_dir=state_dir).returncode == 0
    master.wait_log("kill pid=", what="the cancel's TERM")
    master.signal(signal.SIGKILL)
    master.wait_exit()
    config.write_text("kill_grace = 1\n")
    again: Master = master_factory("--config", str(config), app=APP)
    job = wait_for(lambda: (j := again.jobs()["stubborn"])["state"] not in ("pending", "running") and j,
                   timeout=20, what="the cancelled job to end")
    assert (job["state"], job["outcome"]) == ("cancelled", "cancelled"), job
    wait_for(lambda: "stubborn" in failed_callbacks(again), what="on_failed of the cancelled job")
    assert len(failed_callbacks(again)["stubborn"]) == 1


# -- smaller truths ------------------------------------------------------------------------------


def test_prune_keeps_the_running_masters_start_and_last_reload(master_factory, state_dir):
    master: Master = master_factory(app=APP)
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2", timeout=30)
    before = master.status()["master"]
    assert before["first_started_at"] and before["reloaded_at"], before
    old = master.status()  # a moment later, every event is older than "0s ago"
    pruned = phoenix_cli("prune", "--finished-before", "0s", "--json", state_dir=state_dir)
    assert pruned.returncode == 0, pruned.stderr
    after = master.status()["master"]
    assert (after["first_started_at"], after["reloaded_at"]) == (before["first_started_at"], before["reloaded_at"])
    assert after["uptime_total"] >= old["master"]["uptime_total"]


def test_retry_failed_leaves_cancelled_jobs_alone_and_retry_by_key_takes_them(state_dir):
    StatePaths(state_dir).ensure()
    with Journal(state_dir / "journal.db") as journal:
        for key in ("failed-1", "cancelled-1", "failed-2"):
            journal.submit(f"{TRUTHS}:sleep", json.dumps({"k": key}), key)
        journal.db.execute("UPDATE jobs SET state = 'failed' WHERE key LIKE 'failed-%'")
        assert journal.cancel_pending("cancelled-1") == "pending"
        journal.db.execute("UPDATE callbacks SET state = 'done'")  # its on_failed ran
    retried = phoenix_cli("retry", "--failed", state_dir=state_dir)
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"retried": ["failed-1", "failed-2"]}
    with Journal(state_dir / "journal.db") as journal:
        assert journal.job_by_key("cancelled-1")["state"] == "cancelled"
    by_key = phoenix_cli("retry", "cancelled-1", state_dir=state_dir)
    assert by_key.returncode == 0, by_key.stderr
    assert json.loads(by_key.stdout) == {"retried": ["cancelled-1"]}


def test_the_timeline_shows_cancelled_jobs_as_cancelled_with_their_own_filter(master_factory, state_dir, tmp_path):
    master: Master = master_factory(app=APP)
    master.submit(f"{TRUTHS}:sleep", {"seconds": 60}, key="to-cancel")
    master.submit(f"{TRUTHS}:sized_result", {"bytes": 4}, key="done")
    wait_for(lambda: master.jobs()["to-cancel"]["pid"], what="the job to run")
    assert phoenix_cli("cancel", "to-cancel", state_dir=state_dir).returncode == 0
    wait_for(lambda: master.jobs()["to-cancel"]["state"] == "cancelled", what="the cancel")
    html = tmp_path / "timeline.html"
    made = phoenix_cli("report", "--html", str(html), state_dir=state_dir)
    assert made.returncode == 0, made.stderr
    page = html.read_text()
    assert '<div class="row" data-state="cancelled" data-job="to-cancel">' in page
    assert '<input type="checkbox" id="show-cancelled" checked> cancelled (1)' in page
    assert 'body:has(#show-cancelled:not(:checked)) .row[data-state="cancelled"] { display: none; }' in page


# -- the shared store ----------------------------------------------------------------------------


def shared_master(tmp_path: Path, url: str, *args: str) -> Master:
    return Master(tmp_path / "node-a", APP, "--store", url, "--node", "node-a", *args, log_dir=tmp_path)


def test_shared_store_status_counts_the_slots_in_use_now(tmp_path, pg_url):
    """The lease is renewed every ttl/3 (10 s by default): the slots in use
    are counted from the running attempts, not read from the last renewal."""
    pytest.importorskip("psycopg")
    from phoenix import Client

    master = shared_master(tmp_path, pg_url, "--workers", "3").start()
    try:
        client = Client(store=pg_url)
        for i in range(3):
            client.submit(f"{TRUTHS}:sleep", {"seconds": 60}, key=f"run-{i}")

        def running() -> int:
            result = phoenix_cli("status", "--json", "--store", pg_url)
            report = json.loads(result.stdout)
            return sum(1 for j in report["jobs"] if j["state"] == "running" and j["pid"]) == 3 and report

        report = wait_for(running, timeout=20, what="three jobs running")
        assert [(m["slots_used"], m["slots"]) for m in report["masters"]] == [(3, 3)]
        text = phoenix_cli("status", "--store", pg_url).stdout
        assert "slots 3/3" in text, text
    finally:
        master.stop()


def test_shared_store_cancel_of_a_pending_job_gets_one_on_failed(tmp_path, pg_url):
    pytest.importorskip("psycopg")
    from phoenix import Client

    master = shared_master(tmp_path, pg_url, "--workers", "1").start()
    try:
        client = Client(store=pg_url)
        client.submit(f"{TRUTHS}:sleep", {"seconds": 60}, key="busy")
        wait_for(lambda: master.log().count("spawn pid="), what="the first job to run")
        client.submit(f"{TRUTHS}:sleep", {"seconds": 60}, key="waiting")  # no slot: pending
        cancelled = phoenix_cli("cancel", "waiting", "--store", pg_url)
        assert cancelled.returncode == 0, cancelled.stderr
        wait_for(lambda: any(c["key"] == "waiting" for c in master.callbacks()), timeout=15,
                 what="on_failed of the cancelled pending job")
        calls = [c for c in master.callbacks() if c["key"] == "waiting"]
        assert len(calls) == 1 and calls[0]["kind"] == "failed" and calls[0]["outcome"] == "cancelled", calls
    finally:
        master.stop()


# -- the distribution ----------------------------------------------------------------------------


def test_the_sdist_and_wheel_are_coherent_licensed_and_typed(tmp_path):
    """The sdist has no tests it cannot run (they need the whole checkout),
    has the examples and deploy files the README points at, and the LICENSE;
    the wheel has py.typed and the license; the metadata is the SPDX form."""
    pytest.importorskip("build")
    import subprocess
    import sys
    import tarfile
    import zipfile

    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "SetuptoolsDeprecationWarning" not in built.stdout + built.stderr
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        info = archive.extractfile(next(n for n in archive.getnames() if n.endswith("/PKG-INFO")))
        assert info is not None
        metadata = info.read().decode()
    assert not [name for name in names if name.startswith("tests")], sorted(names)
    assert {"LICENSE", "examples/feeds.py", "examples/feeds/lwn.json", "deploy/phoenix.service",
            "deploy/Dockerfile", "deploy/README.md", "phoenix/py.typed"} <= names
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
    assert "phoenix/py.typed" in files
    # the dashboard's pages, script and style sheet: without them `phoenix dashboard` serves errors
    assert {"phoenix/web/templates/base.html", "phoenix/web/static/dashboard.js",
            "phoenix/web/static/dashboard.css"} <= set(files)
    assert any(name.endswith("licenses/LICENSE") for name in files)
    assert not [name for name in files if name.startswith(("tests/", "examples/", "bench/"))]


# -- the fork server -----------------------------------------------------------------------------


def test_the_fork_server_of_a_killed_master_exits_quietly(tmp_path, capfd):
    """This process plays a master SIGKILLed with a message still queued to it
    (READY, unread): its socket closes with data unread, and the server's next
    read gets ECONNRESET. The server exits 0 without a traceback (it printed a
    raw ConnectionResetError traceback into the master's log, exit 70)."""
    import select
    import sys

    from phoenix.child.forkserver import ForkServer

    settings = {"app": APP, "path": [str(REPO), *sys.path], "argv": ["phoenix"], "master": os.getpid(),
                "socket_path": str(tmp_path / "phoenix.sock"), "outbox": str(tmp_path / "outbox"),
                "log_level": "info", "log_format": "text", "log_file": None}
    server = ForkServer.start(settings)
    try:
        poller = select.poll()
        poller.register(server.sock, select.POLLIN)
        assert poller.poll(30_000), "the fork server never said it was ready"
        server.sock.close()  # READY left unread, as by a master killed before it read it
        code = server.process.wait(30)
    finally:
        if server.process.poll() is None:
            server.process.kill()  # ours, by pid (Popen)
            server.process.wait()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ConnectionResetError" not in err, err
    assert code == 0
