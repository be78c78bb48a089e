"""The feed example on a clock (docs/scheduling.md): every feed every 15
minutes of Berlin's wall clock, at most 10 database writers across every
host, and an urgent refresh of one feed first.

    phoenix start examples.feeds_every15:app
    phoenix submit examples.feeds_every15:fetch_now '{"feed": "lwn"}' --priority 10
"""

import json
import time
from pathlib import Path

import phoenix

FEEDS = Path(__file__).parent / "feeds"

app = phoenix.App(workers=4, heartbeat_interval=0.5, heartbeat_timeout=3.0, pools={"db": 10})


def read(name):
    items = json.loads((FEEDS / f"{name}.json").read_text())["items"]
    for _item in items:
        time.sleep(0.05)  # stands in for the network and the database
        phoenix.heartbeat()
    return len(items)


@app.periodic(cron="*/15 * * * *", tz="Europe/Berlin")
@app.job(max_runtime=600, pool="db")
def refresh_all(params):  # one job per tick, keyed "examples.feeds_every15:refresh_all@<tick, UTC>"
    return {path.stem: read(path.stem) for path in sorted(FEEDS.glob("*.json"))}


@app.job(retries=3, pool="db")
def fetch_now(params):  # one feed, on demand: --priority puts it before the jobs already waiting
    return {"items": read(params["feed"])}
