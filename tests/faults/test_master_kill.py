"""The master SIGKILLed at a random moment (also during a USR2 replacement
and during its preflight), then started again: every job ends in exactly one
recorded outcome, no two attempts of a job ever run at once, callbacks run at
least once (and exactly once unless the kill cut one off), nothing of ours is
left behind, and the journal passes PRAGMA integrity_check."""

import collections
import json
import os
import random
import signal
import sqlite3

import pytest

from phoenix.store.sqlite import Journal
from tests.apps.replace_tools import zombies_of
from tests.conftest import wait_for


def check_invariants(state_dir, keys, violations_file, callbacks, killed_masters):
    db = sqlite3.connect(state_dir / "journal.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        jobs = dict(db.execute("SELECT key, state FROM jobs"))
        assert {key: jobs.get(key) for key in keys} == {key: "finished" for key in keys}
        open_attempts = db.execute("SELECT count(*) FROM attempts WHERE outcome IS NULL").fetchone()[0]
        assert open_attempts == 0
        per_job = collections.Counter(
            key for key, in db.execute("SELECT j.key FROM attempts a JOIN jobs j ON j.id = a.job_id "
                                       "WHERE a.outcome = 'finished'"))
        assert all(per_job[key] == 1 for key in keys), "a job has more than one finished attempt"
    finally:
        db.close()
    assert not violations_file.exists(), violations_file.read_text()
    finished_calls = [c for c in callbacks if c["kind"] == "finished"]
    calls = collections.Counter(c["key"] for c in finished_calls)
    missing = [key for key in keys if calls[key] == 0]
    assert not missing, f"callbacks never ran for {missing}"
    # At least once, and a repeat only where a SIGKILL cut the earlier call off:
    # per job, at most one call from each master, and at most one from a master
    # that was not killed. Several callbacks can be in flight at one kill.
    per_master = collections.Counter((c["key"], c["master"]) for c in finished_calls)
    assert max(per_master.values()) == 1, "a master ran one job's callback twice"
    survivors = collections.Counter(c["key"] for c in finished_calls if c["master"] not in killed_masters)
    assert all(n <= 1 for n in survivors.values()), "a callback repeated without a kill cutting it off"


@pytest.mark.timeout(3600)  # the --long mode runs 20 rounds of 300 jobs; the default takes seconds
@pytest.mark.parametrize("moment", ["running", "preflight", "exec"])
def test_master_sigkill_then_restart(master_factory, state_dir, tmp_path, long_mode, moment):
    rounds, batch, longest = (20, 300, 2.0) if long_mode else (2, 60, 1.0)
    rng = random.Random(f"{moment}-{rounds}")
    lockdir = tmp_path / "locks"
    lockdir.mkdir()
    all_keys = []
    killed_masters: set[int] = set()
    for round_number in range(rounds):
        keys = [f"r{round_number}-{i}" for i in range(batch)]
        all_keys += keys
        state_dir.mkdir(mode=0o700, exist_ok=True)
        journal = Journal(state_dir / "journal.db")
        journal.submit_many(("tests.apps.jobs:exclusive_sleep",
                             json.dumps({"s": round(rng.uniform(0, longest), 3), "lockdir": str(lockdir)}), key)
                            for key in keys)
        journal.close()
        master = master_factory("--workers", "20")
        if moment == "running":
            wait_for(lambda master=master: master.status()["master"]["slots_used"] >= 3,  # on a loaded machine
                     what="children to be running")  # short jobs end about as fast as they start: 3, not 10
            wait_for(lambda: rng.random() < 0.2, interval=0.05, what="a random moment")
        else:
            wait_for(lambda master=master: master.status()["master"]["slots_used"] >= 3,  # on a loaded machine
                     what="children to be running")  # short jobs end about as fast as they start: 3, not 10
            master.signal(signal.SIGUSR2)
            master.wait_log("reload generation=" if moment == "preflight" else "exec generation=", own=True)
        os.kill(master.pid, signal.SIGKILL)
        killed_masters.add(master.pid)
        master.wait_exit()
        again = master_factory("--workers", "20", "--exit-when-done")
        assert again.wait_exit(timeout=120) == 0, again.log()[-3000:]
        assert not zombies_of(again.pid)
        check_invariants(state_dir, all_keys, lockdir / "VIOLATIONS", again.callbacks(), killed_masters)
