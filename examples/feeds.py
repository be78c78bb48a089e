"""The example service: fetch a few feeds, one child per feed.

    phoenix start examples.feeds:app                   # a service (Ctrl-C stops)
    phoenix start examples.feeds:app --exit-when-done  # a batch: exit 0 when all finished

The feeds are files shipped beside this module, so the example runs anywhere
without a network; a real app would fetch URLs here.
"""

import json
import logging
import time
from pathlib import Path

import phoenix

FEEDS = sorted(str(path) for path in (Path(__file__).parent / "feeds").glob("*.json"))
log = logging.getLogger("examples.feeds")

app = phoenix.App(workers=4, heartbeat_interval=0.5, heartbeat_timeout=3.0)


@app.job(retries=3, stall_timeout=60, max_runtime=3600)
def fetch_feed(params):
    items = json.loads(Path(params["url"]).read_text())["items"]
    for item in items:
        time.sleep(0.05)  # stands in for the network and the database
        phoenix.heartbeat()  # progress: this job is not stalled (stall_timeout)
    return {"items": len(items)}  # JSON, at most 64 KiB


@app.on_finished
def done(job, result):  # job.id, job.key, job.attempt, job.params ...
    log.info("feed %s: %s items (attempt %s)", job.key, result["items"], job.attempt)


@app.on_failed
def failed(job, error):
    log.error("feed %s failed after %s attempts: %s", job.key, job.attempt, error)


@app.startup
def initial(app):  # runs at every master start; keys make it idempotent
    for url in FEEDS:
        app.submit(fetch_feed, {"url": url}, key=Path(url).stem)


@app.on_batch_complete
def index(batch):  # a batch of feeds closed and every feed ended: build the index once
    log.info("batch %s complete: %s", batch.name, batch.counts)  # e.g. {"failed": 1, "finished": 5}
