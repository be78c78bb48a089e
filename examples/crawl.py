"""A long crawl over every feed of the example service (docs/long-jobs.md):
one job that saves its cursor with phoenix.checkpoint(), says how far it is
with phoenix.progress(), and stops politely, so that a deploy, a crash or a
stop costs it at most the items since its last checkpoint.

    phoenix start examples.crawl:app
    phoenix submit examples.crawl:crawl_feeds '{}' --key crawl
"""

import json
import time
from pathlib import Path

import phoenix
from examples.feeds import FEEDS

app = phoenix.App(workers=2, heartbeat_interval=0.5, heartbeat_timeout=3.0, kill_grace=5.0)

CHECKPOINT_EVERY = 10  # items: each checkpoint is a durable write, so not one per item


def items_of(feed: int) -> list:
    return json.loads(Path(FEEDS[feed]).read_text())["items"]


@app.job(retries=3)
def crawl_feeds(params):
    # Where the last attempt got to (None on the first): the next feed and item to crawl.
    cursor = phoenix.current_job().checkpoint or {"feed": 0, "item": 0}
    sizes = [len(items_of(feed)) for feed in range(len(FEEDS))]
    try:
        for feed in range(cursor["feed"], len(FEEDS)):
            for item in range(cursor["item"], sizes[feed]):
                time.sleep(0.05)  # stands in for fetching the item and storing it
                cursor = {"feed": feed, "item": item + 1}
                phoenix.progress(sum(sizes[:feed]) + item + 1, sum(sizes), Path(FEEDS[feed]).stem)
                if (item + 1) % CHECKPOINT_EVERY == 0:
                    phoenix.checkpoint(cursor)  # durable when it returns
            cursor = {"feed": feed + 1, "item": 0}
    except phoenix.Interrupted:  # asked to stop (phoenix stop, a drain out of time): save the place, and go
        phoenix.checkpoint(cursor)
        raise  # the attempt ends as `interrupted`: no retry used, the next one resumes here
    return {"items": sum(sizes)}
