"""What must hold after every multi-host scenario, read from the PostgreSQL
tables directly and from the files the jobs and callbacks wrote:

- every submitted job exists once and is in exactly one final state;
- no fenced attempt's result is recorded: a job's outcome is its current
  attempt's, that attempt ended through the fence (state `ended`, or `lost`
  when recovery itself ended the job), and no `late` attempt is current;
- no two attempts of one job ran at the same time (from the ticks the job
  bodies wrote; `overlap_allowed` only across an injected freeze, where the
  docs/many-hosts.md says it can happen);
- one callback per recorded outcome, of the job's final kind and attempt
  (`duplicates_allowed` only where a master was killed mid-callback: at least
  once across a crash), and no callback for a fenced attempt;
- no `running` job or open attempt, no owed callback, once quiet.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tests.multihost.cluster import Cluster

FINAL = ("finished", "failed", "cancelled")


@dataclass
class Summary:
    jobs: int = 0
    attempts: int = 0
    lost: int = 0
    late: int = 0
    overlaps: list[str] = field(default_factory=list)
    duplicate_callbacks: list[str] = field(default_factory=list)
    by_node: Counter[str] = field(default_factory=Counter)


def run_spans(ticks: Path) -> dict[str, list[tuple[float, float, str]]]:
    """key -> [(first tick, last tick, 'attempt.pid')] of every attempt that ran."""
    spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for path in ticks.iterdir():
        key, attempt, pid = path.name.rsplit(".", 2)
        stamps = [float(x) for x in path.read_text().split()]
        if stamps:
            spans[key].append((min(stamps), max(stamps), f"{attempt}.{pid}"))
    return spans


def check(cluster: Cluster, keys: Sequence[str], *, overlap_allowed: bool = False,
          duplicates_allowed: bool = False) -> Summary:
    summary = Summary()
    problems: list[str] = []
    jobs = {row[0]: row for row in cluster.sql(
        "SELECT j.key, j.state, j.outcome, j.current_attempt, a.id, a.n, a.state, a.outcome, a.master "
        "FROM jobs j LEFT JOIN attempts a ON a.id = j.current_attempt")}
    summary.jobs = len(jobs)
    if sorted(jobs) != sorted(set(keys)):
        problems.append(f"jobs in the store {sorted(jobs)} are not the submitted {sorted(set(keys))}")
    for key, (_, state, outcome, current, a_id, _n, a_state, a_outcome, node) in jobs.items():
        if state not in FINAL:
            problems.append(f"{key}: not final ({state})")
            continue
        if current is None:
            continue  # failed before any attempt
        if a_id is None:
            problems.append(f"{key}: current attempt {current} missing")
        elif a_state == "late":
            problems.append(f"{key}: its current attempt is a fenced (late) one")
        elif a_state not in ("ended", "lost") or a_outcome != outcome:
            problems.append(f"{key}: job outcome {outcome} is not its current attempt's ({a_state}, {a_outcome})")
        summary.by_node[node] += 1
    for key, n, state in cluster.sql(
            "SELECT j.key, a.n, a.state FROM attempts a JOIN jobs j ON j.id = a.job_id"):
        summary.attempts += 1
        summary.lost += state in ("lost", "late")
        summary.late += state == "late"
        if state == "running":
            problems.append(f"{key}: attempt {n} still running once quiet")
    open_attempts = cluster.sql("SELECT count(*) FROM attempts WHERE outcome IS NULL")[0][0]
    if open_attempts:
        problems.append(f"{open_attempts} attempts open once quiet")
    owed = cluster.sql("SELECT j.key, c.kind, c.state FROM callbacks c JOIN jobs j ON j.id = c.job_id "
                       "WHERE c.state <> 'done'")
    if owed:
        problems.append(f"callbacks not done once quiet: {owed}")

    for key, spans in run_spans(cluster.ticks).items():
        spans.sort()
        for (_, end, who), (start, _, next_who) in zip(spans, spans[1:], strict=False):
            if start <= end:
                summary.overlaps.append(f"{key}: attempt {next_who} started {end - start:.2f} s before {who} ended")
    if summary.overlaps and not overlap_allowed:
        problems += summary.overlaps

    calls = Counter((c["key"], c["kind"], c["attempt"]) for c in cluster.callbacks())
    per_key = Counter(c["key"] for c in cluster.callbacks())
    for key, (_, state, _, _, _, a_n, *_rest) in jobs.items():
        if state not in ("finished", "failed"):
            continue
        count = calls[(key, state, a_n or 0)]
        if count == 0:
            problems.append(f"{key}: no {state} callback for its attempt {a_n} (calls: "
                            f"{[c for c in cluster.callbacks() if c['key'] == key]})")
        elif count > 1 or per_key[key] > count:
            summary.duplicate_callbacks.append(f"{key}: {per_key[key]} callbacks")
    if summary.duplicate_callbacks and not duplicates_allowed:
        problems += summary.duplicate_callbacks
    if problems:
        raise AssertionError("invariants broken:\n  " + "\n  ".join(problems) + "\n" + cluster.logs())
    return summary


def recovery_delays(cluster: Cluster, keys: Sequence[str], lost_node: str, since: float) -> dict[str, Any]:
    """For each key whose attempt was on `lost_node`: seconds from `since`
    (wall clock) to the start of its next attempt elsewhere."""
    delays: dict[str, Any] = {}
    for key in keys:
        attempts = cluster.attempts(key)
        on_lost = [a for a in attempts if a["master"] == lost_node]
        later = [a for a in attempts if a["master"] != lost_node and on_lost and a["n"] > on_lost[-1]["n"]]
        if on_lost:
            delays[key] = (later[0]["started_at"] - since) if later else None
    return delays
