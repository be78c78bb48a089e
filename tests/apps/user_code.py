"""An app that does at import what real apps do: a thread pool used once, and
numpy seeded (tests/faults/test_user_code.py)."""

import concurrent.futures
import os
import subprocess
import sys

import numpy

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=2.0, kill_grace=1.0, retries=0, workers=4)

POOL = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="warm-up-pool")
POOL.submit(sum, [1, 2]).result()  # a warm-up at import: its worker now waits, idle, in this process only
numpy.random.seed(42)


@app.job(max_runtime=10)
def uses_the_pool(params):
    return POOL.submit(sum, params["numbers"]).result()


@app.job
def draws(params):
    return numpy.random.randint(0, 2**31, 4).tolist()


@app.job
def calls_setsid(params):
    try:
        os.setsid()
        outcome = "ok"
    except PermissionError as exc:
        outcome = f"errno {exc.errno}"
    # What works instead: a subprocess in a session of its own.
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid())"],
                           start_new_session=True, capture_output=True, text=True, check=True)
    return {"setsid": outcome, "leads_its_group": os.getpgid(0) == os.getpid(),
            "subprocess_leads_its_session": child.stdout.strip()}


@app.job
def logs_and_prints(params):
    """Forked from the master (this app's thread pool keeps spawns there)."""
    import logging

    logging.getLogger("tests.user_code").info("a record from job %s", params["who"])
    print(f"a print from job {params['who']}")
    return None


@app.job
def forks_and_both_return(params):
    # A job that forks and forgets to end the copy: both processes come back
    # out of the job function, the copy a little later, with its own result.
    copy = os.fork()
    if copy == 0:
        import time

        time.sleep(0.3)
        if params.get("copy_raises"):
            raise RuntimeError("the forked copy raised")
    else:
        os.waitpid(copy, 0)  # the copy has come back and left by the time the job returns
    return {"pid": os.getpid(), "is_the_copy": copy == 0}
