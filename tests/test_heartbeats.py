"""Heartbeats: only the kernel-vouched sender of a running attempt counts;
callbacks never hold up heartbeat handling; many children, some hung, all
jobs end exactly once."""

import json
import os
import pwd
import signal
import socket

from phoenix.store.sqlite import Journal
from phoenix.wire import heartbeat as protocol
from tests.apps.replace_tools import wait_generation
from tests.conftest import wait_for


def send_from_this_process(path, data):
    """Connect to the heartbeat socket as a child would, and send one message."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(str(path))
        try:
            sock.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the master already looked at who connected, and closed the connection
    finally:
        sock.close()


def test_forged_messages_change_nothing(master_factory, state_dir):
    master = master_factory()
    master.submit("tests.apps.jobs:wait_forever", {}, key="target")
    job = wait_for(lambda: (j := master.jobs()["target"])["pid"] and j, what="the job to run")
    forged = protocol.encode(job["id"], 1, "finished", 10_000, 0, result="forged")
    for data in (forged, b"\xff" * 100, b"{}", json.dumps({"v": 1}).encode()):
        send_from_this_process(state_dir / "phoenix.sock", data)
    wait_for(lambda: master.status()["master"]["rejected"].get("unknown_pid", 0) >= 4,
             what="the forged connections to be counted as rejected")
    assert master.jobs()["target"]["state"] == "running"


def test_another_uid_cannot_reach_the_sockets_nor_beat_for_a_job(master_factory, traversable_state_dir):
    state_dir = traversable_state_dir
    master = master_factory(state=state_dir)
    master.submit("tests.apps.jobs:wait_forever", {}, key="target")
    job = wait_for(lambda: (j := master.jobs()["target"])["pid"] and j, what="the job to run")
    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    assert os.stat(state_dir / "phoenix.sock").st_mode & 0o777 == 0o600
    assert os.stat(state_dir / "control.sock").st_mode & 0o777 == 0o600
    nobody = pwd.getpwnam("nobody")

    def as_nobody(action):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                action()
                outcome = b"sent"
            except PermissionError:
                outcome = b"denied"
            except OSError as exc:
                outcome = f"error {exc.errno}".encode()
            os.write(write, outcome)
            os._exit(0)
        os.close(write)
        result = os.read(read, 100)
        os.close(read)
        os.waitpid(pid, 0)
        return result

    forged = protocol.encode(job["id"], 1, "finished", 10_000, 0, result="forged")
    assert as_nobody(lambda: send_from_this_process(state_dir / "phoenix.sock", forged)) == b"denied"
    control = state_dir / "control.sock"
    assert as_nobody(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(str(control))) == b"denied"
    # Defence in depth: even with the permissions opened up, the master itself
    # closes a connection whose kernel credentials carry another uid.
    os.chmod(state_dir, 0o755)
    os.chmod(state_dir / "phoenix.sock", 0o666)
    assert as_nobody(lambda: send_from_this_process(state_dir / "phoenix.sock", forged)) == b"sent"
    wait_for(lambda: master.status()["master"]["rejected"].get("foreign_uid", 0) >= 1,
             what="the foreign-uid connection to be rejected")
    assert master.jobs()["target"]["state"] == "running"


def test_a_jobs_subprocess_cannot_beat_or_finish_for_it(master_factory, state_dir):
    master = master_factory()
    master.submit("tests.apps.jobs:subprocess_beats", {"socket": str(state_dir / "phoenix.sock")}, key="parent")
    job = master.wait_jobs_done(["parent"], timeout=20)["parent"]
    # Its own result, not the subprocess's forged one; no connection leaked through exec.
    assert job["state"] == "finished" and job["result"] == {"inherited_sockets": 0}
    assert master.status()["master"]["rejected"].get("unknown_pid", 0) >= 1


def test_outcomes_are_acknowledged_on_the_connection_without_touching_the_outbox(master_factory, state_dir):
    """The common case writes no file: the master acknowledges each final
    message once it is in the journal, and the child exits at once."""
    master = master_factory()
    outbox = state_dir / "outbox"
    before = os.stat(outbox).st_mtime_ns
    master.submit_many(("tests.apps.jobs:noop", {"i": i}, f"job-{i}") for i in range(20))
    jobs = master.wait_jobs_done(timeout=30)
    assert all(job["state"] == "finished" and job["result"] == {"i": int(key.split("-")[1])}
               for key, job in jobs.items())
    assert os.stat(outbox).st_mtime_ns == before and not list(outbox.iterdir())  # nothing created, nothing removed


def _socket_inodes(pid):
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:"):
            inodes.add(target)
    return inodes


def test_each_childs_connection_is_handed_over_across_exec(master_factory):
    """USR2: the new image inherits every child's connection (the fd -> pid
    map in the handover), so no child reconnects, and their beats go on."""
    master = master_factory("--heartbeat-interval", "0.1")
    master.submit("tests.apps.jobs:wait_forever", {}, key="steady")
    job = wait_for(lambda: (j := master.jobs()["steady"])["pid"] and j, what="the job to run")
    wait_for(lambda: _socket_inodes(job["pid"]), what="the child to connect")
    connection = _socket_inodes(job["pid"])
    for generation in (2, 3):
        master.signal(signal.SIGUSR2)
        wait_generation(master.state_dir, generation)
    assert master.live()["running"][str(job["id"])]["pid"] == job["pid"]
    wait_for(lambda: master.live()["master"]["beats"] >= 5, what="beats read by the new image")
    assert _socket_inodes(job["pid"]) == connection  # the same connection: never dropped, never remade
    assert not master.live()["master"]["rejected"]


def test_slow_and_failing_callbacks_do_not_hold_up_heartbeats(master_factory):
    master = master_factory()
    master.submit("tests.apps.jobs:noop", {"callback_sleep": 30}, key="slow-callback")
    master.submit("tests.apps.jobs:noop", {"callback_raises": True}, key="bad-callback")
    master.wait_log("callback_error job=bad-callback callback=on_finished")
    assert "RuntimeError: callback exploded on purpose" in master.log()
    # While the slow callback hangs in its thread, a hang is still detected and re-run.
    master.submit("tests.apps.jobs:hang_first", {"s": 0.1}, key="hung")
    jobs = master.wait_jobs_done(["hung"], timeout=15)
    assert jobs["hung"]["attempt"] == 2 and jobs["hung"]["state"] == "finished"
    master.wait_log("callback_timeout job=slow-callback callback=on_finished limit=2.0s")
    calls = [c["key"] for c in master.callbacks()]
    assert calls.count("slow-callback") == 1 and calls.count("bad-callback") == 1


def test_200_children_10_hung_every_job_finishes_exactly_once(master_factory):
    master = master_factory("--workers", "200", "--heartbeat-interval", "0.5", "--heartbeat-timeout", "3")
    # Through the store API, as a script would (the CLI costs an interpreter start per call).
    journal = Journal(master.state_dir / "journal.db")
    journal.submit_many((f"tests.apps.jobs:{'hang_first' if i % 20 == 0 else 'sleep'}", json.dumps({"s": 1.0, "i": i}),
                         f"job-{i}") for i in range(200))
    journal.close()
    jobs = master.wait_jobs_done(timeout=90)
    assert len(jobs) == 200
    assert all(job["state"] == "finished" for job in jobs.values()), [
        j for j in jobs.values() if j["state"] != "finished"]
    hung = [job for key, job in jobs.items() if int(key.split("-")[1]) % 20 == 0]
    assert len(hung) == 10 and all(job["attempt"] == 2 for job in hung)
    assert all(job["attempt"] == 1 for key, job in jobs.items() if int(key.split("-")[1]) % 20)
    wait_for(lambda: len(master.callbacks()) >= 200, timeout=20, what="200 callbacks")
    keys = [c["key"] for c in master.callbacks()]
    assert sorted(keys) == sorted(jobs)  # each exactly once
    kills = [line for line in master.log().splitlines() if " kill pid=" in line]
    assert len(kills) == 10 and all("reason=heartbeat_timeout" in line for line in kills)
