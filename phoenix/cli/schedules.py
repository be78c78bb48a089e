"""`phoenix schedules`: each `@app.periodic` schedule of the app, its next
tick and its last tick's job (read through the jobs_ticks index: one row
per schedule, however many ticks the store keeps)."""

from __future__ import annotations

from typing import Any

from phoenix.app import App
from phoenix.rules.schedule import next_tick, tick_iso, tick_key
from phoenix.store.base import Store


def schedules_report(app: App, store: Store, now: float) -> list[dict[str, Any]]:
    rows = []
    for target, schedule in sorted(app.schedules.items()):
        last = store.last_tick(target)
        row = store.job_by_key(tick_key(target, last[0])) if last is not None else None
        upcoming = next_tick(schedule, now)
        rows.append({
            "target": target,
            "schedule": schedule.description,
            "every": schedule.every,
            "cron": schedule.cron,
            "tz": schedule.tz,
            "catch_up": schedule.catch_up,
            "overlap": schedule.overlap,
            "next_tick": tick_iso(upcoming),
            "next_key": tick_key(target, upcoming),
            "last_tick": tick_iso(last[0]) if last is not None else None,
            "last_key": row["key"] if row is not None else None,
            "last_state": last[1] if last is not None else None,
        })
    return rows


def render_schedules(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["no schedules: the app has no @app.periodic job"]
    lines = []
    for row in rows:
        last = f"{row['last_tick']} {row['last_state']}" if row["last_tick"] else "none yet"
        lines.append(f"{row['target']}  {row['schedule']}  next {row['next_tick']}  last {last}")
    return lines
