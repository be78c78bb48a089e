"""Every labelled metric exports each of its known label values from the
first scrape, at 0: a rate() or an alert on a series that does not exist yet
sees nothing (issue 18: phoenix_heartbeats_rejected and
phoenix_attempt_duration_seconds were missing until their first sample)."""

from __future__ import annotations

import ast
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from phoenix.master import metrics
from phoenix.master.metrics import REJECT_REASONS, Counters, Histograms, _MasterCollector
from phoenix.rules.states import KillReason, Outcome
from phoenix.store.base import JobState

PACKAGE = Path(metrics.__file__).parent.parent  # the whole phoenix package
# The calls through which a rejection is counted (Counters.reject and the helpers that lead to it).
REJECTING_CALLS = {"reject", "_reject", "on_rejected", "_drop"}


class FreshMaster:
    counters = Counters()
    replacements = 0
    generation = 1
    children: dict[int, object] = {}
    slots = 4

    def progress_reported(self) -> list[tuple[str, list[object]]]:
        return []  # no running job reports progress: the families are there, with no series


def scrape() -> str:
    registry = CollectorRegistry()
    registry.register(_MasterCollector(FreshMaster()))
    Histograms(registry)
    return generate_latest(registry).decode()


def test_a_fresh_master_exports_every_label_of_every_labelled_metric_at_zero():
    text = scrape()
    for state in JobState:  # the stores' own list of states
        assert f'phoenix_jobs{{state="{state}"}} 0.0' in text
    assert 'phoenix_jobs{state="cancelled"} 0.0' in text
    for outcome in Outcome:
        assert f'phoenix_attempts_total{{outcome="{outcome}"}} 0.0' in text
        assert f'phoenix_attempt_duration_seconds_count{{outcome="{outcome}"}} 0.0' in text
    for reason in KillReason:
        assert f'phoenix_kills_total{{reason="{reason}"}} 0.0' in text
    for why in REJECT_REASONS:
        assert f'phoenix_heartbeats_rejected_total{{reason="{why}"}} 0.0' in text


def test_every_rejection_reason_the_code_counts_is_a_known_label():
    counted: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name not in REJECTING_CALLS:
                continue
            literals = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if literals:
                counted.add(literals[0])
    assert counted >= {"oversized", "malformed", "control request timeout"}  # the scan sees the call sites
    assert counted <= set(REJECT_REASONS), f"counted but not exported at 0: {sorted(counted - set(REJECT_REASONS))}"
