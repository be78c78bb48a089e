"""The code users bring: what an app sets up at import and a forked job child
inherits. A thread pool used at import works in every job (the child gets it
back empty), numpy's global random state differs in every child, and each is
said in one line of the master's log; `os.setsid()` in a job's own process
stays refused (it leads the process group Phoenix signals), and a subprocess
in a session of its own is the way (docs/fork-safety.md)."""

from __future__ import annotations

import concurrent.futures
import os
import sys

import pytest

from phoenix.child import forksafety
from tests.conftest import phoenix_cli, wait_for
from tests.faults.conftest import log_lines


def ended(master, keys: list[str], timeout: float = 30.0) -> dict:
    return wait_for(lambda: (jobs := master.jobs()) and all(jobs.get(k, {}).get("state") in ("finished", "failed")
                                                             for k in keys) and jobs, timeout, f"jobs {keys} to end")


def test_a_thread_pool_used_at_import_works_in_every_job(master_factory):
    master = master_factory(app="tests.apps.user_code:app")
    keys = [f"pool{i}" for i in range(3)]
    for i, key in enumerate(keys):
        master.submit("tests.apps.user_code:uses_the_pool", {"numbers": [i, 40]}, key=key)
    jobs = ended(master, keys)
    # Before: every job hung on its submit, alive by its beats, until max_runtime killed it.
    assert [jobs[k]["state"] for k in keys] == ["finished"] * 3, [jobs[k].get("error") for k in keys]
    assert [jobs[k]["result"] for k in keys] == [40, 41, 42]
    said = log_lines(master.log(), "fork_unsafe_app")
    assert len([line for line in said if "thread pool" in line]) == 1, said
    assert "warm-up-pool" in said[0]


def test_numpys_global_random_state_differs_in_every_child(master_factory):
    # One app whose children come from the fork server, one from the master
    # (the thread pool keeps spawns there): both reseed.
    for number, (app, target) in enumerate((("tests.apps.seeded_numpy:app", "tests.apps.seeded_numpy:draws"),
                                            ("tests.apps.user_code:app", "tests.apps.user_code:draws"))):
        master = master_factory(app=app)
        keys = [f"draw{number}-{i}" for i in range(4)]
        for key in keys:
            master.submit(target, {}, key=key)
        jobs = ended(master, keys)
        draws = [tuple(jobs[k]["result"]) for k in keys]
        assert len(set(draws)) == 4, f"{app}: children drew the same numbers: {draws}"
        assert any("numpy.random" in line for line in log_lines(master.log(), "fork_unsafe_app"))
        master.stop()


def test_setsid_in_a_job_is_refused_and_a_subprocess_in_its_own_session_is_the_way(master_factory):
    master = master_factory(app="tests.apps.user_code:app")
    master.submit("tests.apps.user_code:calls_setsid", {}, key="setsid")
    job = ended(master, ["setsid"])["setsid"]
    assert job["state"] == "finished", job.get("error")
    # The job's process leads the group that stop, cancel and kills signal:
    # setsid(2) refuses a group leader (EPERM), as docs/fork-safety.md says.
    assert job["result"] == {"setsid": "errno 1", "leads_its_group": True, "subprocess_leads_its_session": "True"}


def test_the_repairs_in_a_forked_child_of_this_process():
    """In-process: a pool used here, inspected, then a fork: the child's
    submit runs (before the repair it never returned)."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="here")
    try:
        pool.submit(int).result()
        found = forksafety.inspect()
        assert found.thread_pools == [pool]
        pid = os.fork()
        if pid == 0:  # the child: only os._exit leaves it
            code = 1
            try:
                forksafety.after_fork()
                code = 0 if pool.submit(sum, [2, 3]).result(timeout=5) == 5 else 2
            except BaseException:  # noqa: BLE001 - any failure is the exit code
                code = 3
            finally:
                os._exit(code)
        _pid, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        pool.shutdown()
    assert forksafety.inspect().thread_pools == []  # shut down: it refuses work in a child as here, nothing to say
    assert "numpy.random" not in sys.modules or found.numpy_random


def test_a_process_pool_used_at_import_is_named():
    """In-process: a ProcessPoolExecutor's processes are not a forked child's
    to use; it is found and said, not repaired."""
    pool = concurrent.futures.ProcessPoolExecutor(1)
    try:
        assert pool.submit(abs, -3).result(timeout=30) == 3
        found = forksafety.inspect()
        assert found.process_pools == 1
        said = [what for what, _effect in found.notices() if "process pool" in what]
        assert len(said) == 1 and "not its own" in said[0]
    finally:
        pool.shutdown()
    assert forksafety.inspect().process_pools == 0


def test_a_multiprocessing_thread_pool_made_at_import_is_named():
    """In-process: a multiprocessing ThreadPool's task handler is a thread a
    forked child does not have (a job using it waited forever, and nothing
    but a note about locks was said); found and said."""
    from multiprocessing.pool import ThreadPool

    pool = ThreadPool(2)
    try:
        assert pool.map(abs, [-1, -2]) == [1, 2]
        found = forksafety.inspect()
        assert found.multiprocessing_pools == 1
        said = [effect for what, effect in found.notices() if "multiprocessing pool" in what]
        assert len(said) == 1 and "inside the job" in said[0]
    finally:
        pool.close()
        pool.join()
    assert forksafety.inspect().multiprocessing_pools == 0


@pytest.mark.parametrize("copy_raises", [False, True])
def test_a_process_the_job_forks_never_reports_the_jobs_outcome(master_factory, copy_raises):
    master = master_factory(app="tests.apps.user_code:app")
    master.submit("tests.apps.user_code:forks_and_both_return", {"copy_raises": copy_raises}, key="forks")
    job = ended(master, ["forks"])["forks"]
    # Before: the copy's result was recorded as the job's, or its exception failed a job that finished.
    assert job["state"] == "finished" and job["attempt"] == 1, job.get("error")
    assert job["result"]["is_the_copy"] is False
    logs = phoenix_cli("logs", "forks", state_dir=master.state_dir)
    assert "forked by the job, returned from the job function" in logs.stdout, logs.stdout
