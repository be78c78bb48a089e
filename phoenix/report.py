"""`phoenix report --html FILE`: a self-contained timeline of the journal.
One row per job, one bar per attempt coloured by outcome, vertical markers
for replacements and master restarts, hover text with pid, duration and
reason. Plain SVG inside one HTML file: no script, no network fetch."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from phoenix.journal import Journal

COLOURS = {
    "finished": "#2e7d32", "error": "#c62828", "killed": "#ef6c00", "crashed": "#6a1b9a",
    "signalled": "#ad1457", "exited": "#4e342e", "lost": "#616161", "interrupted": "#1565c0",
    "cancelled": "#795548",
    "running": "#90caf9",
}
MARKERS = {"master_start": ("#37474f", "master start"), "replaced": ("#00838f", "replacement")}
ROW_HEIGHT = 22
LABEL_WIDTH = 220
PLOT_WIDTH = 900


def _attr(value: Any) -> str:
    return html.escape(str(value), quote=True)


def build(journal: Journal, title: str) -> str:
    attempts = journal.timeline_attempts()
    events = [e for e in journal.timeline_events() if e["kind"] in MARKERS]
    now = time.time()
    starts = [a["started_at"] for a in attempts] + [e["at"] for e in events]
    ends = [a["ended_at"] or now for a in attempts] + [e["at"] for e in events]
    t0 = min(starts, default=now)
    span = max(max(ends, default=now) - t0, 1e-3)
    jobs: dict[int, str] = {}
    for a in attempts:
        jobs.setdefault(a["job_id"], a["key"])
    rows = {job_id: index for index, job_id in enumerate(jobs)}
    height = ROW_HEIGHT * max(len(jobs), 1) + 40

    def x(t: float) -> float:
        return LABEL_WIDTH + (t - t0) / span * PLOT_WIDTH

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{LABEL_WIDTH + PLOT_WIDTH + 20}" height="{height}">']
    for job_id, index in rows.items():
        y = index * ROW_HEIGHT + 20
        parts.append(f'<text class="job-label" x="4" y="{y + 14}">{html.escape(jobs[job_id][:32])}</text>')
    for a in attempts:
        outcome = a["outcome"] or "running"
        end = a["ended_at"] or now
        y = rows[a["job_id"]] * ROW_HEIGHT + 20
        width = max(x(end) - x(a["started_at"]), 2.0)
        hover = (f"{a['key']} attempt {a['n']}: {outcome}" + (f" ({a['reason']})" if a["reason"] else "")
                 + f"\npid {a['pid']}, {end - a['started_at']:.2f} s")
        parts.append(
            f'<rect class="attempt outcome-{outcome}" data-job="{_attr(a["key"])}" data-attempt="{a["n"]}" '
            f'data-outcome="{outcome}" data-pid="{a["pid"]}" x="{x(a["started_at"]):.1f}" y="{y + 3}" '
            f'width="{width:.1f}" height="{ROW_HEIGHT - 6}" fill="{COLOURS.get(outcome, "#999")}">'
            f"<title>{html.escape(hover)}</title></rect>"
        )
    for e in events:
        colour, label = MARKERS[e["kind"]]
        parts.append(
            f'<line class="marker marker-{e["kind"]}" data-generation="{e["generation"]}" x1="{x(e["at"]):.1f}" '
            f'x2="{x(e["at"]):.1f}" y1="10" y2="{height}" stroke="{colour}" stroke-width="2" stroke-dasharray="4 3">'
            f"<title>{label}: generation {e['generation']}, pid {e['pid']}</title></line>"
        )
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><i style="background:{c}"></i>{o}</span>' for o, c in COLOURS.items())
    legend += "".join(f'<span class="key"><i style="background:{c}"></i>{label}</span>'
                      for c, label in MARKERS.values())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; color: #222; }}
.job-label {{ font: 12px ui-monospace, monospace; fill: #333; }}
.legend .key {{ margin-right: 12px; white-space: nowrap; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -2px; }}
rect.attempt:hover {{ stroke: #000; stroke-width: 1; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(jobs)} jobs, {len(attempts)} attempts, {sum(1 for e in events if e["kind"] == "replaced")} replacements,
{sum(1 for e in events if e["kind"] == "master_start")} master starts; from
{time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0))} over {span:.1f} s.</p>
<p class="legend">{legend}</p>
{"".join(parts)}
</body></html>
"""


def write(journal_path: Path, output: Path) -> int:
    with Journal(journal_path, create=False) as journal:
        page = build(journal, f"Phoenix timeline: {journal_path.parent}")
        output.write_text(page)
        return len(journal.timeline_attempts())
