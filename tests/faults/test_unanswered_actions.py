"""A request delivered to a master that does not answer (SIGSTOP, a paused
VM) has an unknown result: the master reads it once it runs again. The
commands say so, with `phoenix status`'s exit 4 (not responding), and never
call it refused: the cancel did happen after SIGCONT."""

from __future__ import annotations

import signal

from tests.conftest import phoenix_cli, wait_for

FOREVER = "tests.apps.jobs:wait_forever"


def test_a_cancel_the_stopped_master_does_not_answer_is_unknown_and_exits_4(master_factory):
    master = master_factory()
    master.submit(FOREVER, {}, key="forever")
    wait_for(lambda: master.jobs()["forever"]["state"] == "running", what="the job to run")
    master.signal(signal.SIGSTOP)
    try:
        result = phoenix_cli("cancel", "forever", state_dir=master.state_dir)
    finally:
        master.signal(signal.SIGCONT)
    assert result.returncode == 4, result.stderr
    assert result.stderr.startswith("phoenix: error: the master did not answer within 5 s; the cancel may still "
                                    "happen: see `phoenix show forever`"), result.stderr
    assert "refused" not in result.stderr and len(result.stderr.splitlines()) == 1
    # Continued, it reads the request it was sent: the unknown became a cancel.
    wait_for(lambda: master.jobs()["forever"]["state"] == "cancelled", what="the delivered cancel to happen")


def test_a_reload_the_stopped_master_does_not_answer_is_unknown_too(master_factory):
    master = master_factory()
    master.signal(signal.SIGSTOP)
    try:
        result = phoenix_cli("reload", state_dir=master.state_dir)
    finally:
        master.signal(signal.SIGCONT)
    assert result.returncode == 4, result.stderr
    assert "was delivered and may still take effect" in result.stderr, result.stderr
    master.wait_log("ready generation=2", timeout=30)  # it was delivered: the replacement happens


def test_a_stop_the_stopped_master_does_not_answer_is_unknown_and_happens_after_sigcont(master_factory):
    master = master_factory()
    master.signal(signal.SIGSTOP)
    try:
        result = phoenix_cli("stop", state_dir=master.state_dir)
    finally:
        master.signal(signal.SIGCONT)
    assert result.returncode == 4, result.stderr
    assert "the stop was delivered and may still take effect" in result.stderr, result.stderr
    assert master.proc is not None
    wait_for(lambda: master.proc.poll() is not None, what="the delivered stop to end the master")
