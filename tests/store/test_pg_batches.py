"""A batch on the shared store, two masters: the batch's last job ends on the
other master than its first ones, and that master, which recorded the last
outcome, runs `on_batch_complete`, once; the other runs none."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Master, wait_for

pytest.importorskip("psycopg")

TARGET = "tests.apps.batches:gated"


def test_the_master_that_records_the_last_outcome_calls_back_once(tmp_path: Path, pg_url: str) -> None:
    from phoenix import Client
    from phoenix.store.postgres import PgStore

    masters = {name: Master(tmp_path / name, "tests.apps.batches:app", "--store", pg_url, "--lease-ttl", "2",
                            "--node", name, "--workers", "2", log_dir=tmp_path).start() for name in ("a", "b")}
    try:
        gates = {n: tmp_path / f"gate-{n}" for n in range(4)}
        with Client(store=pg_url).batch("feeds") as batch:
            for n, gate in gates.items():
                batch.submit(TARGET, {"n": n, "gate": str(gate), "fail": n == 1}, key=f"feeds-{n}")

        def nodes() -> dict[int, str] | None:
            with PgStore(pg_url) as store:
                running = {int(job["key"].split("-")[1]): job["node"] for job in store.status_rows(state="running")}
            return running if len(running) == 4 else None

        on = wait_for(nodes, timeout=30, what="the 4 jobs running, 2 on each master")
        assert sorted(on.values()) == ["a", "a", "b", "b"]
        for n in (n for n, node in on.items() if node == "a"):
            gates[n].touch()  # a's jobs end first ...
        def remaining() -> int:
            with PgStore(pg_url) as store:
                return int(store.batches(name="feeds")[0]["remaining"])

        wait_for(lambda: remaining() == 2, timeout=30, what="a's jobs ended")
        for n in (n for n, node in on.items() if node == "b"):
            gates[n].touch()  # ... b records the last outcome
        wait_for(lambda: masters["b"].callbacks(), timeout=30, what="b's on_batch_complete")
        [record] = masters["b"].callbacks()
        assert record["counts"] == {"failed": 1, "finished": 3} and record["jobs"] == 4
        assert record["master"] == masters["b"].pid
        with PgStore(pg_url) as store:
            wait_for(lambda: store.batches()[0]["state"] == "complete", timeout=10, what="complete")
        import psycopg

        def callback_row() -> tuple[str, int, str] | None:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                return conn.execute("SELECT state, runs, owner FROM callbacks WHERE kind = 'on_batch_complete'"
                                    ).fetchone()

        wait_for(lambda: callback_row() == ("done", 1, "b"), timeout=10, what="the callback done, once, by b")
        assert masters["a"].callbacks() == []
    finally:
        for master in masters.values():
            master.stop()
