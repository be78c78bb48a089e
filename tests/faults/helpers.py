"""Small helpers shared by the fault-injection tests."""

from __future__ import annotations

import json
from typing import Any, Iterable

from phoenix.store.sqlite import Journal
from phoenix.wire import control
from tests.conftest import Master, wait_for

FAULTY = "tests.apps.faulty"


def submit(master: Master, target: str, params: Any, key: str) -> int:
    """Submit through the store API (what `phoenix submit` does, without an
    interpreter start per job) and wake the master."""
    journal = Journal(master.state_dir / "journal.db")
    try:
        job_id, _created = journal.submit(f"{FAULTY}:{target}", json.dumps(params), key)
    finally:
        journal.close()
    wake(master)
    return job_id


def submit_all(master: Master, jobs: Iterable[tuple[str, str, str]]) -> None:
    """(target, params JSON, key) jobs in one journal transaction, as a script
    seeding a batch would, then wake the master."""
    journal = Journal(master.state_dir / "journal.db")
    try:
        journal.submit_many(jobs)
    finally:
        journal.close()
    wake(master)


def wake(master: Master) -> None:
    try:
        control.request(master.state_dir / "control.sock", {"cmd": "wake"}, timeout=5.0)
    except control.ControlError:
        pass  # the master polls for pending jobs every second anyway


def live(master: Master) -> dict[str, Any]:
    """The master's live status straight from the control socket."""
    return control.request(master.state_dir / "control.sock", {"cmd": "status"}, timeout=10.0)


def running_job(master: Master, key: str, timeout: float = 15.0) -> dict[str, Any]:
    """The journal row of `key` once its attempt has a pid."""
    return wait_for(lambda: (j := master.jobs().get(key)) and j["pid"] and j["state"] == "running" and j,
                    timeout, f"job {key} to run")
