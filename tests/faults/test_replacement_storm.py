"""Replacement storm: USR2 after USR2 while 200 children run. The pid never
changes, the generation rises by exactly the number of replacements
accepted, no child is killed or re-run, and the master's fds and memory
stay flat."""

import json
import os
import signal
import time

from phoenix.store.sqlite import Journal
from tests.apps.replace_tools import fd_count
from tests.apps.replace_tools import rss_kb as rss_kib
from tests.conftest import wait_for

APP = "tests.apps.replace:app"


def test_usr2_storm_with_200_children(master_factory, state_dir, tmp_path, long_mode, machine_to_itself):
    signals, window = (50, 30.0) if long_mode else (16, 10.0)
    children = 200
    done = tmp_path / "done"
    state_dir.mkdir(mode=0o700)
    journal = Journal(state_dir / "journal.db")
    journal.submit_many(("tests.apps.replace:until", json.dumps({"path": str(done), "i": i}), f"job-{i}")
                        for i in range(children))
    journal.close()
    master = master_factory("--workers", str(children), "--heartbeat-interval", "0.5", "--heartbeat-timeout", "5",
                            app=APP)
    wait_for(lambda: master.status()["master"]["slots_used"] == children, timeout=60, what="200 running children")
    master.wait_log("ready generation=1")
    fds_before, rss_before = fd_count(master.pid), rss_kib(master.pid)
    try:
        started = time.monotonic()
        for n in range(signals):
            # Spread over the window; a USR2 during a replacement is refused (or merged by the kernel).
            time.sleep(max(0.0, started + n * window / signals - time.monotonic()))
            os.kill(master.pid, signal.SIGUSR2)
        def settled():
            # No replacement under way, and the log (read after the status) shows
            # exactly one exec and one ready line per generation.
            status = master.status()
            log = master.log()
            generation = status["master"]["generation"]
            reload = status["master"].get("reload") or {}
            consistent = (log.count(" exec generation=") == generation - 1
                          and log.count("ready generation=") == generation)
            return consistent and reload.get("state") in ("ready", "failed") and (log, status)

        log, final = wait_for(settled, timeout=60, what="the last replacement to settle")
        accepted = log.count(" exec generation=")
        assert accepted >= 2
        assert final["master"]["pid"] == master.pid
        assert final["master"]["generation"] == 1 + accepted
        assert log.count("ready generation=") == 1 + accepted
        wait_for(lambda: fd_count(master.pid) <= fds_before, timeout=10,
                 what=f"fds back to {fds_before} (now {fd_count(master.pid)})")
        assert rss_kib(master.pid) - rss_before < 8 * 1024  # KiB: flat, allowing for allocator noise
        assert master.status()["master"]["slots_used"] == children
    finally:
        done.touch()
    jobs = master.wait_jobs_done(timeout=60)
    assert len(jobs) == children
    assert {job["state"] for job in jobs.values()} == {"finished"}
    assert {job["attempt"] for job in jobs.values()} == {1}  # nobody killed, nobody re-run
    assert " kill pid=" not in master.log()
    print(f"storm: {signals} USR2 in {window} s, {accepted} replacements accepted, "
          f"fds {fds_before}->{fd_count(master.pid)}, RSS {rss_before}->{rss_kib(master.pid)} KiB")
