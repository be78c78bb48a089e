"""The timeline page (`phoenix report --html`): what it shows, read back from
the DOM of headless Chromium, and a layout check: an inline test hook (#check)
writes each drawn element's box into the DOM, and nothing may overlap."""

import html.parser
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from phoenix.cli import report
from phoenix.store.sqlite import Journal
from tests.conftest import phoenix_cli

EVIL_KEY = "<script>alert('k')</script> & \"quoted\""
LONG_KEY = "nightly-export/" + "very-long-customer-identifier-" * 4 + "end"
EVIL_TARGET = "tests.apps.jobs:gone<b>bold</b>"
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="needs Debian's chromium (installed by .ci/run)")


@pytest.mark.parametrize("span", [0.001, 0.05, 0.5, 3, 47, 600, 5000, 90_000, 10 * 86400])
def test_ticks_are_round_clock_times_far_enough_apart(span):
    t0 = 1_790_000_000.37
    step, ticks = report.ticks(t0, span)
    assert ticks and all(t0 - 1e-6 <= t <= t0 + span + 1e-6 for t in ticks)
    if len(ticks) > 1:
        assert step / span * report.PLOT_WIDTH >= report.MIN_TICK_GAP
        assert len({report.clock(t, step, span) for t in ticks}) == len(ticks)  # no two ticks read the same
        local = ticks[0] + time.localtime(ticks[0]).tm_gmtoff
        assert abs(local / step - round(local / step)) < 1e-6  # on a round clock time
    smaller = [s for s in report.TICK_STEPS if s < step]
    assert not smaller or smaller[-1] / span * report.PLOT_WIDTH < report.MIN_TICK_GAP  # the densest that fits


class _Dom(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.elements = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


def _chromium(page: Path, fragment: str, profile: Path) -> list[tuple[str, dict]]:
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,900", f"--user-data-dir={profile}", "--dump-dom", page.as_uri() + fragment],
        capture_output=True, text=True, timeout=60,
    ).stdout
    parsed = _Dom()
    parsed.feed(dom)
    return parsed.elements


def _box(attrs: dict) -> tuple[float, ...]:
    return tuple(float(v) for v in attrs["data-box"].split())


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _drawn(elements, tag: str, cls: str) -> list[dict]:
    return [a for t, a in elements if t == tag and cls in a.get("class", "").split()]


@needs_chromium
def test_timeline_page_in_headless_chromium(master_factory, state_dir, tmp_path):
    state_dir.mkdir()
    with Journal(state_dir / "journal.db") as journal:  # a target gone before its job ran: no attempt at all
        journal.submit(EVIL_TARGET, "{}", "orphan")
    master = master_factory()
    master.submit("tests.apps.jobs:hang_first", {"s": 0.1}, key="hung-once")
    master.submit("tests.apps.jobs:noop", {}, key="quick")
    master.submit("tests.apps.jobs:noop", {}, key=LONG_KEY)
    master.submit("tests.apps.jobs:raises", {}, key=EVIL_KEY)
    master.wait_jobs_done(["hung-once", "quick", LONG_KEY, EVIL_KEY, "orphan"])
    master.stop()
    master.submit("tests.apps.jobs:raises", {}, key="broken")  # into the journal; no master runs
    again = master_factory("--exit-when-done")  # a master restart: a second marker
    assert again.wait_exit() == 1
    page = tmp_path / "timeline.html"
    result = phoenix_cli("report", "--html", str(page), state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    assert not any(fetch in text for fetch in ("src=", "href=", "url(", "@import"))  # self-contained
    assert text.count("<script") == 1  # the inline test hook, nothing else
    assert "alert(" not in text.replace("&lt;script&gt;alert(&#x27;k&#x27;)", "")  # the key only escaped

    elements = _chromium(page, "#check", tmp_path / "profile")
    assert [t for t, _ in elements].count("script") == 1 and not any(t == "b" for t, _ in elements)
    bars = _drawn(elements, "rect", "attempt")
    assert [(b["data-job"], b["data-outcome"]) for b in bars] == [
        ("hung-once", "killed"), ("hung-once", "finished"), ("quick", "finished"), (LONG_KEY, "finished"),
        (EVIL_KEY, "error"), ("broken", "error")]
    assert all(b["data-pid"].isdigit() for b in bars)
    markers = _drawn(elements, "line", "marker")
    assert [m["class"] for m in markers] == ["marker marker-master_start", "marker marker-master_start"]
    crosses = _drawn(elements, "g", "no-attempt")
    assert [c["data-job"] for c in crosses] == ["orphan"]
    rows = [a for t, a in elements if t == "div" and a.get("class") == "row"]
    assert [(r["data-job"], r["data-state"]) for r in rows] == [
        ("orphan", "failed"), ("hung-once", "finished"), ("quick", "finished"), (LONG_KEY, "finished"),
        (EVIL_KEY, "failed"), ("broken", "failed")]
    labels = _drawn(elements, "span", "job-label")
    assert [label["title"].split("\n")[0] for label in labels] == [r["data-job"] for r in rows]  # full key on hover
    assert labels[0]["title"] == f"orphan\n{EVIL_TARGET}"

    # Layout: labels stay in their column, clear of bars, crosses and each other; ticks clear of each other.
    label_boxes = [_box(a) for a in labels]
    drawn = [_box(a) for a in bars + crosses]
    ticks = [_box(a) for a in _drawn(elements, "text", "tick-label")]
    assert len(ticks) >= 2
    for i, box in enumerate(label_boxes):
        assert box[2] - box[0] <= report.LABEL_WIDTH and box[3] - box[1] > 0, box
        assert not any(_overlap(box, other) for other in label_boxes[i + 1:] + drawn + ticks), box
    for i, box in enumerate(ticks):
        assert not any(_overlap(box, other) for other in ticks[i + 1:]), (box, ticks)
        assert box[0] >= 0 and box[2] <= 1400
    (rows_box,) = [_box(a) for a in _drawn(elements, "div", "rows")]
    assert rows_box[3] - rows_box[1] == len(rows) * report.ROW_HEIGHT
    (body,) = [a for t, a in elements if t == "body"]
    page_height = float(body["data-page-height"])
    assert page_height - rows_box[3] <= 20  # the page ends with its last row (plus the body's margin)

    # The state filter (pure CSS): unticking "finished" hides those rows and the page shrinks to fit.
    filtered = _chromium(page, "#check:hide=finished", tmp_path / "profile")
    shown = [row["data-job"] for row in _drawn(filtered, "div", "row") if _box(row)[3] > _box(row)[1]]
    assert shown == ["orphan", EVIL_KEY, "broken"]
    (body,) = [a for t, a in filtered if t == "body"]
    assert page_height - float(body["data-page-height"]) == 3 * report.ROW_HEIGHT


def test_html_from_the_journal_is_escaped_everywhere(tmp_path):
    """Keys, targets, errors and reasons reach the page as text, never as markup."""
    with Journal(tmp_path / "journal.db") as journal:
        job_id, _ = journal.submit("app:<i>target</i>", "{}", EVIL_KEY)
        journal.fail_without_attempt(job_id, "no attribute '<i>target</i>' & more")
        page = report.build(journal, "title <i>here</i>")
    assert "<i>" not in page and "<script>alert" not in page
    assert "&lt;i&gt;target&lt;/i&gt;" in page and "&amp; more" in page and "title &lt;i&gt;here" in page
    assert re.search(r'data-job="&lt;script&gt;alert\(&#x27;k&#x27;\)&lt;/script&gt; &amp; &quot;quoted&quot;"', page)
