"""The PostgreSQL job queues Phoenix's PostgreSQL store is measured against,
on the same server: procrastinate (its worker, for end-to-end throughput; its
fetch/finish statements, for the store path alone) and pgqueuer (its
dequeue/log statements, for the store path alone). pip install -e '.[bench]'.

    PHOENIX_BENCH_PG_URL=... procrastinate --app bench.pg_peers.procrastinate_app worker --concurrency 2

The store-path loops run in-process, one job at a time through one
connection, as Phoenix's own store-path loop does: claim one job, record its
outcome, repeat. No job code runs and nothing forks.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import timedelta
from typing import Any

import procrastinate

# The worker process builds the app from the environment, as procrastinate's CLI imports it by name.
procrastinate_app = procrastinate.App(connector=procrastinate.PsycopgConnector(
    conninfo=os.environ.get("PHOENIX_BENCH_PG_URL", "")))


@procrastinate_app.task(name="noop", pass_context=False)
def noop(**params: Any) -> Any:  # a sync task: procrastinate runs it in a thread, as a no-op job must be cheap
    return params


def _app(url: str, **pool: Any) -> procrastinate.App:
    """An app of its own on `url` (the module's app is the worker's, built from the environment)."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url, **pool))
    app.task(name="noop", pass_context=False)(noop.func)
    return app


def procrastinate_install(url: str) -> None:
    import psycopg
    from procrastinate.schema import SchemaManager

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SchemaManager.get_schema().replace("%%", "%"))


def procrastinate_defer(url: str, n: int) -> None:
    """n no-op jobs in one transaction (its own batch_defer)."""

    async def main() -> None:
        app = _app(url)
        async with app.open_async():
            await app.tasks["noop"].batch_defer_async(*({"i": i} for i in range(n)))

    asyncio.run(main())


def procrastinate_reset(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE procrastinate_jobs CASCADE")


async def procrastinate_store_path(url: str, n: int) -> float:
    """Seconds to fetch and finish n already deferred jobs, one at a time."""
    from procrastinate.jobs import Status

    app = _app(url, min_size=1, max_size=1)
    async with app.open_async():
        await app.tasks["noop"].batch_defer_async(*({"i": i} for i in range(n)))
        worker_id = await app.job_manager.register_worker()
        t0 = time.perf_counter()
        for _ in range(n):
            job = await app.job_manager.fetch_job(queues=None, worker_id=worker_id)
            assert job is not None
            await app.job_manager.finish_job(job, Status.SUCCEEDED, delete_job=False)
        took = time.perf_counter() - t0
        await app.job_manager.unregister_worker(worker_id)
    return took


async def pgqueuer_store_path(url: str, n: int) -> float:
    """Seconds to dequeue and log n already enqueued jobs, one at a time."""
    import psycopg
    from pgqueuer.adapters.persistence.queries import Queries
    from pgqueuer.domain.types import QueueEntrypoint, QueueManagerId
    from pgqueuer.ports.repository import EntrypointExecutionParameter

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        queries = Queries.from_psycopg_connection(conn)
        if not await queries.schema_is_installed():
            await queries.install()
        await queries.enqueue(["noop"] * n, [b"{}"] * n, [0] * n)
        entrypoints = {QueueEntrypoint("noop"): EntrypointExecutionParameter(concurrency_limit=0)}
        manager = QueueManagerId(uuid.uuid4())
        t0 = time.perf_counter()
        for _ in range(n):
            jobs = await queries.dequeue(1, entrypoints, manager, None, timedelta(seconds=30))
            assert len(jobs) == 1
            await queries.log_jobs([(jobs[0], "successful", None)])
        return time.perf_counter() - t0
