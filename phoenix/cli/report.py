"""`phoenix report --html FILE`: a self-contained timeline of the journal.
One row per job, one bar per attempt coloured by outcome, a cross for a job
that failed before any attempt, vertical markers for replacements and master
restarts, a time axis in clock time, and hover text with pid, duration,
reason and error. One HTML file: inline CSS and SVG, no network fetch. The
filter by job state is pure CSS; the only script is a test hook (`#check`)
that writes element boxes into the DOM for a headless browser to read."""

from __future__ import annotations

import html
import math
import os
import time
from pathlib import Path
from typing import Any

from phoenix.cli.status import formatted, number
from phoenix.linux.untrusted import visible
from phoenix.store.base import JobState, Store
from phoenix.wire.heartbeat import progress_view

COLOURS = {
    "finished": "#2e7d32", "error": "#c62828", "killed": "#ef6c00", "crashed": "#6a1b9a",
    "signalled": "#ad1457", "exited": "#4e342e", "lost": "#616161", "interrupted": "#1565c0",
    "cancelled": "#795548",
    "running": "#90caf9",
}
MARKERS = {"master_start": ("#37474f", "master start"), "replaced": ("#00838f", "replacement")}
NO_ATTEMPT_COLOUR = "#c62828"
# The state filters, in the page's order: the ended first (every state of JobState, each once).
STATE_FILTERS = (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED, JobState.RUNNING, JobState.PENDING,
                 JobState.SCHEDULED)
ROW_HEIGHT = 22
LABEL_WIDTH = 220
PLOT_WIDTH = 900
AXIS_HEIGHT = 28
RIGHT_MARGIN = 48  # room for half of the last tick's clock time
MIN_TICK_GAP = 90  # px between ticks: wider than the longest clock time label (11 chars)
TICK_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
              43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)
HOVER_ERROR_CHARS = 1000
DEFAULT_JOBS = 1000  # rows of a page unless `phoenix report --limit` says otherwise


def _esc(value: Any) -> str:
    # Controls and bidi overrides written out too (`visible`): a browser would
    # reorder the text around one, and a lone surrogate could not be written.
    return html.escape(visible(str(value), multiline=True), quote=True)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _progress_line(stored: str | None) -> str:
    """The attempt's last phoenix.progress(), as a line of its bar's hover text."""
    shown = progress_view(stored)
    if shown is None:
        return ""
    total = f" of {shown['total']}" if shown["total"] is not None else ""
    return f"\nprogress {shown['done']}{total}" + (f": {_cut(str(shown['note']), 80)}" if shown["note"] else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def ticks(t0: float, span: float, width: float = PLOT_WIDTH) -> tuple[float, list[float]]:
    """The tick step (the smallest that keeps ticks MIN_TICK_GAP px apart) and
    the ticks inside [t0, t0 + span], on round local clock times."""
    step = next((s for s in TICK_STEPS if s / span * width >= MIN_TICK_GAP), TICK_STEPS[-1])
    offset = time.localtime(t0).tm_gmtoff  # round in local time: 10:00 not 10:00 UTC shown as 11:00
    first, last = math.ceil((t0 + offset) / step - 1e-9), math.floor((t0 + span + offset) / step + 1e-9)
    # A span shorter than the smallest step still gets one tick, at its start.
    return step, [k * step - offset for k in range(first, last + 1)] or [t0]


def clock(t: float, step: float, span: float) -> str:
    """A tick's label: the digits the step changes, and the date when the
    same clock time could come twice."""
    if step >= 86400 or span >= 86400:
        return time.strftime("%m-%d %H:%M", time.localtime(t))
    if step >= 60:
        return time.strftime("%H:%M", time.localtime(t))
    if step >= 1:
        return time.strftime("%H:%M:%S", time.localtime(t))
    tenths = round(t * 10)  # a tick at k * 0.1 s may sit a hair below its tenth
    return time.strftime("%H:%M:%S", time.localtime(tenths // 10)) + f".{tenths % 10}"


def build(journal: Store, title: str, limit: int = DEFAULT_JOBS) -> str:
    # Rows: the `limit` jobs that changed last among those with an attempt and those that failed
    # before any (unknown target); never every job of the journal.
    jobs, attempts, unstarted = journal.timeline_recent(limit)
    events = [e for e in journal.timeline_events() if e["kind"] in MARKERS]
    started = {a["job_id"] for a in attempts}
    jobs = [j for j in jobs if j["job_id"] in started or (j["state"] == "failed" and j["attempts"] == 0)]
    never_started = [j for j in jobs if j["job_id"] not in started]
    now = time.time()
    # A time another tool damaged (text, bytes in the column) places nothing: its bar or marker is drawn at
    # the axis' start, and its hover text shows the value as it is.
    starts = [number(a["started_at"]) for a in attempts] + [number(e["at"]) for e in events] + [
        number(j["updated_at"]) for j in never_started]
    ends = [number(a["ended_at"] or now) for a in attempts] + [number(e["at"]) for e in events] + [
        number(j["updated_at"]) for j in never_started]
    t0 = min((t for t in starts if t is not None), default=now)
    span = max(max((t for t in ends if t is not None), default=now) - t0, 1e-3)

    def x(t: Any) -> float:
        placed = number(t)
        return 0.0 if placed is None else (placed - t0) / span * PLOT_WIDTH

    def hms(t: Any) -> str:
        return formatted(t, lambda when: time.strftime("%H:%M:%S", time.localtime(when)))

    step, tick_times = ticks(t0, span)
    axis = [f'<line x1="{LABEL_WIDTH}" x2="{LABEL_WIDTH + PLOT_WIDTH}" y1="{AXIS_HEIGHT - 1}" '
            f'y2="{AXIS_HEIGHT - 1}" stroke="#888"/>']
    grid = []
    for t in tick_times:
        axis.append(f'<line class="tick" x1="{LABEL_WIDTH + x(t):.1f}" x2="{LABEL_WIDTH + x(t):.1f}" '
                    f'y1="{AXIS_HEIGHT - 6}" y2="{AXIS_HEIGHT - 1}" stroke="#888"/>'
                    f'<text class="tick-label" x="{LABEL_WIDTH + x(t):.1f}" y="{AXIS_HEIGHT - 10}" '
                    f'text-anchor="middle">{clock(t, step, span)}</text>')
        grid.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="0" y2="100%"/>')

    bars: dict[int, list[str]] = {j["job_id"]: [] for j in jobs}
    for a in attempts:
        outcome = a["outcome"] or "running"
        end = a["ended_at"] or now
        left = min(x(a["started_at"]), PLOT_WIDTH - 2)
        width = min(max(x(end) - x(a["started_at"]), 2.0), PLOT_WIDTH - left)
        began, ended = number(a["started_at"]), number(end)
        took = "?" if began is None or ended is None else f"{ended - began:.2f}"
        hover = (f"{a['key']} attempt {a['n']}: {outcome}" + (f" ({a['reason']})" if a["reason"] else "")
                 + f"\nstarted {hms(a['started_at'])}, pid {a['pid']}, {took} s"
                 + _progress_line(a.get("progress"))
                 + (f"\n{_cut(a['error'], HOVER_ERROR_CHARS)}" if a["error"] else ""))
        bars[a["job_id"]].append(
            f'<rect class="attempt outcome-{_esc(outcome)}" data-job="{_esc(a["key"])}" data-attempt="{_esc(a["n"])}" '
            f'data-outcome="{_esc(outcome)}" data-pid="{_esc(a["pid"])}" x="{left:.1f}" y="3" '
            f'width="{width:.1f}" height="{ROW_HEIGHT - 6}" fill="{COLOURS.get(outcome, "#999")}">'
            f"<title>{_esc(hover)}</title></rect>"
        )
    for j in never_started:
        centre = min(max(x(j["updated_at"]), 8.0), PLOT_WIDTH - 8)
        hover = (f"{j['key']}: failed before any attempt, "
                 f"{hms(j['updated_at'])}\ntarget {j['target']}\n"
                 f"{_cut(j['error'] or 'no error recorded', HOVER_ERROR_CHARS)}")
        bars[j["job_id"]].append(
            f'<g class="no-attempt" data-job="{_esc(j["key"])}" transform="translate({centre:.1f} {ROW_HEIGHT / 2})">'
            f'<title>{_esc(hover)}</title><circle r="6" fill="#fff" stroke="{NO_ATTEMPT_COLOUR}" stroke-width="2"/>'
            f'<path d="M-3 -3L3 3M3 -3L-3 3" stroke="{NO_ATTEMPT_COLOUR}" stroke-width="2"/></g>'
        )

    rows = []
    for j in jobs:
        state = j["state"] if j["state"] in STATE_FILTERS else "pending"
        rows.append(
            f'<div class="row" data-state="{state}" data-job="{_esc(j["key"])}">'
            f'<span class="job-label" title="{_esc(j["key"])}&#10;{_esc(j["target"])}">{_esc(j["key"])}</span>'
            f'<svg class="bars" width="{PLOT_WIDTH}" height="{ROW_HEIGHT}">{"".join(bars[j["job_id"]])}</svg></div>'
        )
    markers = []
    for e in events:
        colour, label = MARKERS[e["kind"]]
        hover = (f"{label} at {hms(e['at'])}: generation {e['generation']}, "
                 f"pid {e['pid']}" + (f"\n{e['detail']}" if e["detail"] else ""))
        markers.append(
            f'<line class="marker marker-{e["kind"]}" data-generation="{_esc(e["generation"])}" x1="{x(e["at"]):.1f}" '
            f'x2="{x(e["at"]):.1f}" y1="0" y2="100%" stroke="{colour}" stroke-width="2" stroke-dasharray="4 3">'
            f"<title>{_esc(hover)}</title></line>"
        )

    counts = {s: sum(1 for j in jobs if j["state"] == s) for s in STATE_FILTERS}
    checkboxes = "".join(
        f'<label><input type="checkbox" id="show-{s}" checked> {s} ({counts[s]})</label>' for s in STATE_FILTERS)
    hide_rules = "\n".join(
        f'body:has(#show-{s}:not(:checked)) .row[data-state="{s}"] {{ display: none; }}' for s in STATE_FILTERS)
    legend = "".join(f'<span class="key"><i style="background:{c}"></i>{o}</span>' for o, c in COLOURS.items())
    legend += "".join(f'<span class="key"><i style="background:{c}"></i>{label}</span>'
                      for c, label in MARKERS.values())
    legend += '<span class="key"><i class="cross"></i>failed before any attempt</span>'
    total_width = LABEL_WIDTH + PLOT_WIDTH + RIGHT_MARGIN
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 16px; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 8px; }}
p {{ margin: 6px 0; }}
.legend .key {{ margin-right: 12px; white-space: nowrap; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -2px; }}
.legend i.cross {{ box-sizing: border-box; border: 2px solid {NO_ATTEMPT_COLOUR}; border-radius: 50%; }}
.filter label {{ margin-right: 12px; white-space: nowrap; }}
.timeline {{ width: {total_width}px; }}
.axis {{ display: block; position: sticky; top: 0; background: #fff; z-index: 3; }}
.tick-label {{ font: 11px ui-monospace, monospace; fill: #555; }}
.rows {{ position: relative; }}
.rows > svg {{ position: absolute; top: 0; left: {LABEL_WIDTH}px; width: {PLOT_WIDTH}px; height: 100%;
  overflow: visible; pointer-events: none; }}
.grid {{ stroke: #e4e4e4; z-index: 0; }}
.markers {{ z-index: 2; }}
.markers line {{ pointer-events: stroke; }}
.row {{ display: flex; height: {ROW_HEIGHT}px; position: relative; z-index: 1; }}
.row:hover {{ background: rgba(21, 101, 192, 0.06); }}
.job-label {{ box-sizing: border-box; flex: none; width: {LABEL_WIDTH}px; padding-right: 8px;
  font: 12px/{ROW_HEIGHT}px ui-monospace, monospace; color: #333;
  overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }}
.bars {{ flex: none; display: block; }}
rect.attempt:hover, .no-attempt:hover circle {{ stroke: #000; stroke-width: 1; }}
{hide_rules}
</style></head><body>
<h1>{_esc(title)}</h1>
<p>{_count(len(jobs), "job")}{" (those that changed last: --limit draws more)" if len(jobs) == limit else ""},
{_count(len(attempts), "attempt")}, {len(never_started)} failed before any attempt,
{_count(sum(1 for e in events if e["kind"] == "replaced"), "replacement")},
{_count(sum(1 for e in events if e["kind"] == "master_start"), "master start")}; from
{time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0))} over {span:.1f} s.
{f"{_count(unstarted, 'job')} waiting for a first attempt (not shown)." if unstarted else ""}</p>
<p class="legend">{legend}</p>
<p class="filter">Show jobs: {checkboxes}</p>
<div class="timeline">
<svg class="axis" width="{total_width}" height="{AXIS_HEIGHT}">{"".join(axis)}</svg>
<div class="rows"><svg class="grid">{"".join(grid)}</svg>{"".join(rows)}<svg class="markers">{"".join(markers)}</svg>
</div></div>
<script>
// Test hook, inert unless the address ends in #check (or #check:hide=STATE,...):
// writes each drawn element's box into data-box for a headless browser's --dump-dom.
(() => {{
  const [hook, hide] = location.hash.slice(1).split(":hide=");
  if (hook !== "check") return;
  for (const state of (hide || "").split(",")) {{
    const box = document.getElementById("show-" + state);
    if (box) box.checked = false;
  }}
  for (const el of document.querySelectorAll(".row, .job-label, .attempt, .no-attempt, .tick-label, .marker, .rows")) {{
    const r = el.getBoundingClientRect();
    el.dataset.box = [r.left, r.top, r.right, r.bottom].map(v => v.toFixed(1)).join(" ");
  }}
  document.body.dataset.pageHeight = document.documentElement.getBoundingClientRect().height;
}})();
</script>
</body></html>
"""


def write(journal: Store, title: str, output: Path, limit: int = DEFAULT_JOBS) -> int:
    """Write the page of the store's history; returns how many attempts it draws."""
    page = build(journal, title, limit)
    _write_private(output, page.encode("utf-8"))  # UTF-8: what the page declares, whatever the locale
    return page.count('<rect class="attempt ')


def _write_private(path: Path, data: bytes) -> None:
    """The page holds jobs' parameters, errors and tracebacks: a new file is
    0600 whatever the umask, and a link at its name is not followed (the
    caller checked that no other user could have swapped the way to it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)
