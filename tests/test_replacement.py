"""Replacing the master on SIGUSR2 while its children keep running: in place
(same pid), refused or failed preflights, the unicorn-style fork mode, and
hygiene across many generations. Real masters, real signals; every wait is
for something observable, with a deadline."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from phoenix.linux.paths import StatePaths
from phoenix.store.sqlite import Journal
from phoenix.wire import control
from tests.apps.replace_tools import (
    APP,
    HEARTBEAT_TIMEOUT,
    QUICK,
    SLOW,
    UNTIL,
    alive,
    cmdline,
    fd_count,
    gates_fixture,  # noqa: F401 - the `gates` fixture
    live,
    lock_is_held,
    read_pid,
    rss_kb,
    runs,
    signals_pending,
    stat_fields,
    stop_foreign_master,
    wait_generation,
    zombies_of,
)
from tests.conftest import REPO, phoenix_cli, wait_for


def running_pids(state_dir: Path, keys: list[str]) -> dict[str, int]:
    """Wait until each job runs; {key: pid}."""
    def all_running() -> dict[str, int] | None:
        status = live(state_dir)
        if status is None:
            return None
        by_id = {str(job["id"]): job["key"] for job in _jobs(state_dir).values()}
        pids = {by_id[job_id]: r["pid"] for job_id, r in status["running"].items() if job_id in by_id}
        return pids if all(k in pids for k in keys) else None

    return wait_for(all_running, SLOW, f"jobs {keys} to run")


def _jobs(state_dir: Path) -> dict[str, dict]:
    from phoenix.cli.status import collect

    return {job["key"]: job for job in collect(StatePaths(state_dir), page=(0, 10**9))[0]["jobs"]}


def callback_counts(master) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for call in master.callbacks():
        counts[(call["key"], call["kind"])] = counts.get((call["key"], call["kind"]), 0) + 1
    return counts


def journal_callback_runs(state_dir: Path) -> dict[str, int]:
    journal = Journal(StatePaths(state_dir).journal)
    try:
        rows = journal.db.execute("SELECT j.key, c.runs FROM callbacks c JOIN jobs j ON j.id = c.job_id").fetchall()
    finally:
        journal.close()
    return dict(rows)


# -- 1. in place ---------------------------------------------------------------------


def test_in_place_usr2_keeps_the_pid_and_the_children(master_factory, state_dir, tmp_path):
    runs_file = tmp_path / "runs.jsonl"
    master = master_factory("--log-level", "debug", app=APP, env={"PHOENIX_TEST_RUNS": str(runs_file)})
    done = tmp_path / "done"
    keys = [f"long{i}" for i in range(4)]
    for key in keys:
        master.submit(UNTIL, {"path": str(done), "tag": key}, key=key)
    master.submit(QUICK, {"tag": "before"}, key="before")
    master.wait_jobs_done(["before"], timeout=SLOW)
    wait_for(lambda: callback_counts(master).get(("before", "finished")) == 1, timeout=SLOW, what="the first callback")
    before = running_pids(state_dir, keys)

    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2", timeout=SLOW)
    status = master.status()  # `phoenix status --json`, as a user sees it
    assert status["master"]["pid"] == master.pid
    assert status["master"]["generation"] == 2
    assert read_pid(StatePaths(state_dir).pidfile) == master.pid
    assert running_pids(state_dir, keys) == before  # the same processes, adopted
    assert all(alive(pid) for pid in before.values())
    assert live(state_dir)["master"]["reload"]["state"] == "ready"
    # reload --wait's poll asks for the master alone: no line per child (400 KB at 4,000 children).
    brief = control.request(StatePaths(state_dir).control_socket, {"cmd": "status", "running": False})
    assert "running" not in brief and brief["master"]["generation"] == 2, brief
    assert set(live(state_dir)["running"]) == {str(job["id"]) for key, job in master.jobs().items() if key in keys}
    # A short fd list came in the environment, in the form every release reads (a rollback works);
    # only a list too long for it (thousands of children) goes in a memfd (tests/unit/test_handover_list.py).
    environ = dict(item.split(b"=", 1)
                   for item in Path(f"/proc/{master.pid}/environ").read_bytes().split(b"\0") if item)
    assert environ[b"PHOENIX_FDS"].startswith(b"heartbeat="), environ[b"PHOENIX_FDS"]

    done.touch()
    jobs = master.wait_jobs_done(keys, timeout=SLOW)
    for key in keys:
        assert jobs[key]["state"] == "finished", jobs[key]
        assert jobs[key]["attempt"] == 1
        assert jobs[key]["result"] == {"pid": before[key], "attempt": 1}  # the very process that started
    wait_for(lambda: all(callback_counts(master).get((k, "finished")) for k in keys),
             timeout=SLOW, what="the callbacks")
    counts = callback_counts(master)
    assert counts == {**{(k, "finished"): 1 for k in keys}, ("before", "finished"): 1}
    assert all(call["master"] == master.pid for call in master.callbacks())
    assert sorted(r["key"] for r in runs(runs_file)) == sorted(keys + ["before"])  # no body ran twice
    log = master.log()
    assert log.count(" adopt ") == 4 and log.count("how=child") == 4
    assert " kill " not in log
    assert master.proc.poll() is None
    # The children kept beating to the same socket, read by both images.
    exec_at = log.index(" exec generation=2")
    for pid in before.values():
        beats = beat_seqs(log, pid)
        assert any(at < exec_at for _, at in beats) and any(at > exec_at for _, at in beats)


def beat_seqs(log: str, pid: int) -> list[tuple[int, int]]:
    """(seq, offset in the log) of each beat of `pid` the master logged (at debug level)."""
    return [(int(m.group(1)), m.start()) for m in re.finditer(rf" beat pid={pid} .*? seq=(\d+)", log)]


def test_beats_sent_during_a_long_exec_wait_in_the_socket(master_factory, state_dir, tmp_path, gates):
    master = master_factory("--log-level", "debug", app=APP, env=gates.env)
    done = tmp_path / "done"
    for key in ("a", "b"):
        master.submit(UNTIL, {"path": str(done)}, key=key)
    pids = running_pids(state_dir, ["a", "b"])
    try:
        gates.hold("start")
        master.signal(signal.SIGUSR2)
        gates.waiting("start")
        time.sleep(2.0)  # a slow import of the new code: 2 s between images, more than the queue holds
        gates.release("start")
        master.wait_log("ready generation=2", timeout=SLOW)
        ready_at = master.log().index("ready generation=2")
        wait_for(lambda: all(any(at > ready_at for _, at in beat_seqs(master.log(), pid)) for pid in pids.values()),
                 timeout=SLOW, what="beats read by the new image")
        log = master.log()
        for key, pid in pids.items():
            numbers = sorted(n for n, _ in beat_seqs(log, pid))
            assert numbers == list(range(1, numbers[-1] + 1)), f"{key}: beats missing from {numbers}"
    finally:
        done.touch()


def test_signals_arriving_during_the_exec_are_kept_and_children_get_grace(master_factory, state_dir, tmp_path, gates):
    """The new image is held at import (signals still blocked): a job ends,
    HUP/USR2/CHLD arrive, more than heartbeat_timeout passes. After it is
    ready: the ended job is recorded once from its message, nobody is killed,
    HUP reloads the config, the pending USR2 replaces again (not lost); a TERM
    sent during a later exec stops the master cleanly."""
    master = master_factory(app=APP, env=gates.env)
    ends = tmp_path / "ends"
    stays = tmp_path / "stays"
    master.submit(UNTIL, {"path": str(ends)}, key="ends")
    master.submit(UNTIL, {"path": str(stays)}, key="stays")
    pids = running_pids(state_dir, ["ends", "stays"])

    gates.hold("start")
    master.signal(signal.SIGUSR2)
    assert gates.waiting("start") == master.pid  # the new image, same pid, inside the exec window
    ends.touch()
    wait_for(lambda: (stat_fields(pids["ends"]) or ["?"])[0] == "Z",
             timeout=SLOW, what="the job to end unreaped (a zombie)")
    master.signal(signal.SIGHUP)
    master.signal(signal.SIGUSR2)
    # Pending, not handled and not lost: blocked across the exec. (CHLD comes
    # once the job's last thread is gone, a moment after it shows as a zombie.)
    wanted = {signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD}
    wait_for(lambda: wanted <= signals_pending(master.pid), timeout=SLOW, what=f"{wanted} pending in the held image")
    # Hold the exec longer than heartbeat_timeout: an adopted child's grace
    # must start when the new master is ready, not at its last beat.
    time.sleep(HEARTBEAT_TIMEOUT + 0.3)
    gates.release("start")

    master.wait_log("ready generation=2", timeout=SLOW)
    master.wait_log("config_reloaded", timeout=SLOW)
    jobs = master.wait_jobs_done(["ends"], timeout=SLOW)
    assert jobs["ends"]["state"] == "finished" and jobs["ends"]["attempt"] == 1
    assert jobs["ends"]["result"]["pid"] == pids["ends"]
    wait_generation(state_dir, 3)  # the USR2 sent during the exec was not lost
    master.wait_log("ready generation=3", timeout=SLOW)
    assert master.proc.poll() is None
    assert alive(pids["stays"]) and running_pids(state_dir, ["stays"]) == {"stays": pids["stays"]}
    assert " kill " not in master.log()
    wait_for(lambda: callback_counts(master).get(("ends", "finished")) == 1, timeout=SLOW, what="the callback")

    # TERM during an exec: neither lost nor fatal; once ready, the master stops as asked.
    gates.hold("start")
    master.signal(signal.SIGUSR2)
    gates.waiting("start")
    master.signal(signal.SIGTERM)
    assert signal.SIGTERM in signals_pending(master.pid)
    gates.release("start")
    assert master.wait_exit(SLOW) == 0
    log = master.log()
    assert "ready generation=4" in log and "stop mode=term" in log
    jobs = _jobs(state_dir)
    assert jobs["stays"]["state"] == "pending" and jobs["stays"]["outcome"] == "interrupted"
    assert callback_counts(master) == {("ends", "finished"): 1}
    assert " kill " not in log


def test_a_second_usr2_during_a_replacement_is_refused(master_factory, state_dir, tmp_path, gates):
    master = master_factory(app=APP, env=gates.env)
    gates.hold("check")
    master.signal(signal.SIGUSR2)
    gates.waiting("check")  # the preflight is running
    master.signal(signal.SIGUSR2)
    master.wait_log("reload_refused", timeout=SLOW)
    reply = phoenix_cli("reload", state_dir=state_dir)
    assert reply.returncode == 1 and "already in progress" in reply.stderr, reply
    assert master.log().count("reload_refused") == 2
    gates.release("check")
    master.wait_log("ready generation=2", timeout=SLOW)
    assert master.log().count(" exec generation=") == 1
    assert live(state_dir)["master"]["generation"] == 2


def test_exec_waits_for_a_running_callback_so_it_runs_once(master_factory, state_dir, tmp_path):
    """A callback still running at USR2 is not cut off by the exec (and so not
    run again by the new image); callbacks owed meanwhile run in the new image."""
    master = master_factory(app=APP)
    release = tmp_path / "release-callback"
    meanwhile = tmp_path / "meanwhile"
    master.submit(UNTIL, {"path": str(meanwhile)}, key="meanwhile")
    running_pids(state_dir, ["meanwhile"])
    master.submit(QUICK, {"callback_until": str(release)}, key="slow-callback")
    wait_for(lambda: callback_counts(master).get(("slow-callback", "finished")) == 1,
             timeout=SLOW, what="the callback to start")
    master.signal(signal.SIGUSR2)
    master.wait_log("preflight_ok", timeout=SLOW)
    meanwhile.touch()  # ends while the exec waits: its callback is owed, for the new image to run
    master.wait_jobs_done(["meanwhile"], timeout=SLOW)
    assert " exec generation=" not in master.log()  # still waiting for the callback
    release.touch()
    master.wait_log("ready generation=2", timeout=SLOW)
    wait_for(lambda: callback_counts(master).get(("meanwhile", "finished")) == 1,
             timeout=SLOW, what="the owed callback")
    assert callback_counts(master) == {("slow-callback", "finished"): 1, ("meanwhile", "finished"): 1}
    wait_for(lambda: journal_callback_runs(state_dir) == {"slow-callback": 1, "meanwhile": 1},
             timeout=SLOW, what="the journal to record one run of each callback")


# -- 2. preflight failure ------------------------------------------------------------------


def test_check_is_the_preflight_on_its_own(tmp_path, state_dir):
    ok = phoenix_cli("check", APP, state_dir=state_dir)
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok: {APP} imports"), ok
    (tmp_path / "broken_app.py").write_text("import phoenix\napp = phoenix.App(workers=-1)\n")
    bad = phoenix_cli("check", "broken_app:app", state_dir=state_dir,
                      env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PYTHONDONTWRITEBYTECODE": "1"})
    assert bad.returncode != 0 and "workers must not be negative" in bad.stderr, bad


def test_a_broken_deploy_is_refused_and_the_old_master_keeps_working(master_factory, state_dir, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    module = code / "deployed_app.py"
    original = (REPO / "tests" / "apps" / "replace.py").read_text()
    module.write_text(original)
    env = {"PYTHONPATH": f"{code}:{REPO}", "PYTHONDONTWRITEBYTECODE": "1"}
    master = master_factory(app="deployed_app:app", env=env)
    done = tmp_path / "done"
    submit = lambda target, params, key: phoenix_cli(  # noqa: E731 - the module is on the master's path only
        "submit", target, json.dumps(params), "--key", key, state_dir=state_dir, env=env)
    assert submit("deployed_app:until", {"path": str(done)}, "long").returncode == 0
    pid = running_pids(state_dir, ["long"])["long"]

    module.write_text(original + "\ndef broken(:\n    pass\n")  # the new release does not even parse
    result = phoenix_cli("reload", "--wait", state_dir=state_dir, env=env)
    assert result.returncode == 1, result
    assert "reload failed" in result.stderr and "SyntaxError" in result.stderr, result.stderr
    assert "deployed_app.py" in result.stderr
    log = master.wait_log("reload_failed", timeout=SLOW)
    # The error in the master's log, as one line naming the file (its traceback only with --log-level debug).
    assert "SyntaxError in " in log and "deployed_app.py" in log and "importlib" not in log
    master.signal(signal.SIGUSR2)  # a plain USR2 with the same broken code: refused the same way
    master.wait_log("reload_failed", count=2, timeout=SLOW)

    # Still the same master, still watching: the job is neither killed nor lost.
    assert master.proc.poll() is None
    status = live(state_dir)
    assert status["master"]["generation"] == 1 and status["master"]["pid"] == master.pid
    assert status["master"]["reload"]["state"] == "failed"
    assert status["running"][str(_jobs(state_dir)["long"]["id"])]["pid"] == pid
    done.touch()
    jobs = master.wait_jobs_done(["long"], timeout=SLOW)
    assert jobs["long"]["state"] == "finished" and jobs["long"]["attempt"] == 1
    wait_for(lambda: callback_counts(master) == {("long", "finished"): 1}, timeout=SLOW, what="the callback")

    module.write_text(original)  # the fix
    result = phoenix_cli("reload", "--wait", state_dir=state_dir, env=env)
    assert result.returncode == 0, result
    assert "generation 2" in result.stdout
    assert live(state_dir)["master"]["pid"] == master.pid
    assert submit("deployed_app:quick", {}, "after").returncode == 0
    assert master.wait_jobs_done(["after"], timeout=SLOW)["after"]["state"] == "finished"
    assert " kill " not in master.log()


def test_a_job_that_ends_during_a_failed_preflight_still_gets_its_callback(master_factory, state_dir, tmp_path, gates):
    master = master_factory(app=APP, env=gates.env)
    done = tmp_path / "done"
    master.submit(UNTIL, {"path": str(done)}, key="during")
    running_pids(state_dir, ["during"])
    gates.hold("check")
    master.signal(signal.SIGUSR2)
    gates.waiting("check")
    done.touch()
    # Recorded while the preflight runs; its callback waits for the exec.
    master.wait_jobs_done(["during"], timeout=SLOW)
    gates.die("check")
    gates.release("check")
    master.wait_log("reload_failed", timeout=SLOW)
    wait_for(lambda: callback_counts(master) == {("during", "finished"): 1},
             timeout=SLOW, what="the held-back callback")
    assert "exit code 3" in live(state_dir)["master"]["reload"]["error"]


# -- 3. fork mode (unicorn-compatible) ----------------------------------------------------


def test_fork_mode_hands_over_to_a_new_pid_that_adopts_the_children(master_factory, state_dir, tmp_path, gates):
    runs_file = tmp_path / "runs.jsonl"
    paths = StatePaths(state_dir)
    master = master_factory("--reexec", "fork", app=APP, env={**gates.env, "PHOENIX_TEST_RUNS": str(runs_file)})
    old = master.pid
    early, late = tmp_path / "early", tmp_path / "late"
    master.submit(UNTIL, {"path": str(early)}, key="early")
    master.submit(UNTIL, {"path": str(late)}, key="late")
    pids = running_pids(state_dir, ["early", "late"])
    new = None
    try:
        gates.hold("start")
        master.signal(signal.SIGUSR2)
        new = gates.waiting("start")
        assert new != old
        assert read_pid(paths.pidfile.with_name("phoenix.pid.oldbin")) == old  # during the handover
        assert not paths.pidfile.exists()
        assert lock_is_held(paths.lockfile)
        early.touch()  # ends during the handover: its old parent no longer reaps, the new master is not up
        wait_for(lambda: (stat_fields(pids["early"]) or ["?"])[0] == "Z", timeout=SLOW, what="early to end")
        time.sleep(HEARTBEAT_TIMEOUT + 0.3)  # longer than heartbeat_timeout while the old master reads no beats
        gates.release("start")

        assert master.wait_exit(SLOW) == 0  # the old master leaves once the new one is ready
        assert read_pid(paths.pidfile) == new
        assert not paths.pidfile.with_name("phoenix.pid.oldbin").exists()
        assert lock_is_held(paths.lockfile)
        status = wait_generation(state_dir, 2)
        assert status["master"]["pid"] == new
        late_id = str(_jobs(state_dir)["late"]["id"])
        assert status["running"][late_id]["pid"] == pids["late"] and status["running"][late_id]["adopted"]
        assert alive(pids["late"])

        late.touch()
        jobs = master.wait_jobs_done(["early", "late"], timeout=SLOW)
        for key in ("early", "late"):
            assert jobs[key]["state"] == "finished" and jobs[key]["attempt"] == 1, jobs[key]
            assert jobs[key]["result"]["pid"] == pids[key]
        wait_for(lambda: callback_counts(master) == {("early", "finished"): 1, ("late", "finished"): 1},
                 timeout=SLOW, what="one callback each")
        assert all(call["master"] == new for call in master.callbacks())
        assert sorted(r["key"] for r in runs(runs_file)) == ["early", "late"]
        log = master.log()
        assert "how=pidfd" in log and "handed_over" in log and " kill " not in log
        assert not list(paths.outbox.iterdir())
    finally:
        gates.release("start")
        if new is not None:
            stop_foreign_master(new)


def test_fork_mode_new_master_dying_before_ready_leaves_the_old_one_in_charge(master_factory, state_dir, tmp_path,
                                                                              gates):
    paths = StatePaths(state_dir)
    master = master_factory("--reexec", "fork", app=APP, env=gates.env)
    done = tmp_path / "done"
    master.submit(UNTIL, {"path": str(done)}, key="job")
    pid = running_pids(state_dir, ["job"])["job"]

    gates.die("start")  # the new code passes the preflight, then crashes as a master
    result = phoenix_cli("reload", "--wait", state_dir=state_dir)
    assert result.returncode == 1, result
    assert "died" in result.stderr or "exited" in result.stderr, result.stderr
    log = master.wait_log("reload_failed", timeout=SLOW)
    assert "exit code 3" in log
    assert read_pid(paths.pidfile) == master.pid
    assert not paths.pidfile.with_name("phoenix.pid.oldbin").exists()
    assert master.proc.poll() is None
    status = live(state_dir)
    assert status["master"]["pid"] == master.pid and status["master"]["generation"] == 1

    done.touch()  # the old master still watches and records
    jobs = master.wait_jobs_done(["job"], timeout=SLOW)
    assert jobs["job"]["state"] == "finished" and jobs["job"]["attempt"] == 1 and jobs["job"]["result"]["pid"] == pid
    wait_for(lambda: callback_counts(master) == {("job", "finished"): 1}, timeout=SLOW, what="the callback")

    gates.die("start", on=False)  # fixed: the next USR2 hands over
    new = None
    try:
        result = phoenix_cli("reload", "--wait", state_dir=state_dir)
        assert result.returncode == 0, result
        new = live(state_dir)["master"]["pid"]
        assert new != master.pid
        assert master.wait_exit(SLOW) == 0
        assert read_pid(paths.pidfile) == new
    finally:
        if new is None:
            new = read_pid(paths.pidfile)
        if new is not None and new != master.pid:
            stop_foreign_master(new)


# -- 5. hygiene across generations -------------------------------------------------------


@pytest.mark.timeout(300)  # fifty: ~30 s on an idle machine; two cores shared with load tests can take far longer
def test_fifty_replacements_leave_no_trace(master_factory, state_dir, tmp_path, request):
    # Twenty in the default run (a leak of one descriptor or 200 KiB per generation still shows), fifty with --long.
    long_run = request.config.getoption("--long", default=False) or os.environ.get("PHOENIX_FAULTS_LONG", "") not in (
        "", "0")
    replacements = 50 if long_run else 20
    paths = StatePaths(state_dir)
    master = master_factory(app=APP)
    done = tmp_path / "done"
    master.submit(UNTIL, {"path": str(done)}, key="across")
    child = running_pids(state_dir, ["across"])["across"]

    lock_lost = threading.Event()
    stop_probe = threading.Event()

    def probe_lock() -> None:  # all along, not only between replacements
        while not stop_probe.is_set():
            if not lock_is_held(paths.lockfile):
                lock_lost.set()
            time.sleep(0.002)

    prober = threading.Thread(target=probe_lock, daemon=True)
    prober.start()
    fds, rss = [], []
    try:
        for generation in range(2, 2 + replacements):
            master.signal(signal.SIGUSR2)
            status = wait_generation(state_dir, generation)
            assert status["master"]["pid"] == master.pid
            assert status["master"]["generation"] == generation  # one at a time, none skipped
            assert cmdline(master.pid).startswith(f"phoenix: master gen {generation} ")
            assert zombies_of(master.pid) == []
            fds.append(fd_count(master.pid))
            rss.append(rss_kb(master.pid))
    finally:
        stop_probe.set()
        prober.join()
    assert not lock_lost.is_set(), "the pidfile lock was free at some moment"
    assert max(fds) - min(fds) <= 2, fds  # measured: the same count in every generation
    assert max(rss) - min(rss) <= 4096, rss  # KiB; measured: within ~0.3 MiB
    assert alive(child) and running_pids(state_dir, ["across"]) == {"across": child}
    done.touch()
    jobs = master.wait_jobs_done(["across"], timeout=SLOW)
    assert jobs["across"]["attempt"] == 1 and jobs["across"]["result"]["pid"] == child
    wait_for(lambda: callback_counts(master) == {("across", "finished"): 1}, timeout=SLOW, what="the callback")
    assert master.log().count("ready generation=") == 1 + replacements
    assert " kill " not in master.log()


def test_a_stop_during_a_fork_mode_hand_over_waits_for_the_new_master_and_stops_it(master_factory, state_dir, gates):
    # During the hand-over the pidfile is phoenix.pid.oldbin: `phoenix stop` said "no master is running"
    # (exit 3) and the new master ran on.
    paths = StatePaths(state_dir)
    master = master_factory("--reexec", "fork", app=APP, env=gates.env)
    new = None
    try:
        gates.hold("start")
        master.signal(signal.SIGUSR2)
        new = gates.waiting("start")
        assert not paths.pidfile.exists() and lock_is_held(paths.lockfile)
        results: list = []
        stopping = threading.Thread(target=lambda: results.append(phoenix_cli("stop", state_dir=state_dir)))
        stopping.start()
        time.sleep(0.3)  # (not proof of anything: gives the stop time to look while no pidfile is there)
        gates.release("start")
        stopping.join(SLOW)
        [result] = results
        assert result.returncode == 0, result.stderr
        assert f"stopped master pid {new}" in result.stdout
        wait_for(lambda: not lock_is_held(paths.lockfile), SLOW, "the new master to exit")
    finally:
        if new is not None:
            stop_foreign_master(new)


def test_an_app_removed_from_the_config_before_usr2_is_the_one_the_new_image_runs(master_factory, state_dir,
                                                                                   tmp_path):
    # Found from outside: the new image found no app ("no app given") and exited, leaving its jobs masterless.
    config = tmp_path / "phoenix.toml"
    config.write_text(f'app = "{APP}"\n')
    master = master_factory("--config", str(config), app=APP, start=False)
    master.command.remove(APP)  # the app named by the configuration only
    master.start()
    done = tmp_path / "done"
    master.submit(UNTIL, {"path": str(done)}, key="long")
    before = running_pids(state_dir, ["long"])
    config.write_text("")  # the app setting removed between the start and the USR2
    master.signal(signal.SIGUSR2)
    master.wait_log("ready generation=2", timeout=SLOW)
    status = live(state_dir)["master"]
    assert status["pid"] == master.pid and status["state"] == "running" and status["app"] == APP, status
    assert "error: no app given" not in master.log()
    assert "running the one the old image ran" in master.log()
    assert running_pids(state_dir, ["long"]) == before
    done.touch()
    assert master.wait_jobs_done(["long"], timeout=SLOW)["long"]["attempt"] == 1
