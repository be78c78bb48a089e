"""A long job for the Kubernetes recipe (tests/test_kubernetes.py): a crawl
over numbered items that records each item it does in a ledger file (the
work, one line "ATTEMPT ITEM" each), checkpoints its cursor every few items,
and saves it when asked to stop. The cursor it saves on Interrupted is taken
from the ledger, not from a variable: TERM may land between an item's write
and the line after it, and the ledger is what was done."""

import os
import time

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=2.0, backoff_base=0.05, backoff_cap=0.2, workers=2,
                  outcome_delivery_timeout=2.0)


def _done_by(ledger: str, attempt: int) -> list[int]:
    with open(ledger) as lines:
        return [int(item) for line in lines for a, item in [line.split()] if int(a) == attempt]


@app.job(retries=3)
def crawl(params):
    job = phoenix.current_job()
    start = job.checkpoint["next"] if job.checkpoint else 0
    with open(params["starts"], "a") as starts:
        starts.write(f"{job.attempt} {start}\n")
    # Later attempts go faster: only the first must still run when its pod ends.
    step = params["step"] if job.attempt == 1 else params["step"] / 50
    ledger = os.open(params["ledger"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for item in range(start, params["n"]):
            time.sleep(step)
            os.write(ledger, f"{job.attempt} {item}\n".encode())  # the item's work, done
            if (item + 1) % params["every"] == 0:
                phoenix.checkpoint({"next": item + 1})
    except phoenix.Interrupted:
        done = _done_by(params["ledger"], job.attempt)
        phoenix.checkpoint({"next": max(done) + 1 if done else start})
        raise
    finally:
        os.close(ledger)
    return {"started_at": start}
