"""Prometheus metrics (`phoenix start --metrics 127.0.0.1:9464`), served by
prometheus_client on its own thread.

The loop keeps plain counters (an int increment per beat costs nothing); a
custom collector reads them at scrape time, so the heartbeat path takes no
lock. Histograms are prometheus_client's own, observed once per attempt or
callback, never per beat.

prometheus_client is imported only when metrics are served: it adds ~9 MB
to the master, and every fork copies the master's page tables (on this kind
of VM, that doubled the cost of a fork)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sized, cast

from phoenix.errors import UsageError
from phoenix.rules.states import KillReason, Outcome
from phoenix.store.base import JobState

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class MetricsSource(Protocol):
    """What the collector reads of the master at scrape time."""

    # Read-only members: the master's own attributes (a dict of children, say)
    # satisfy them without being exactly these types.
    @property
    def counters(self) -> "Counters": ...
    @property
    def replacements(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def children(self) -> Sized: ...
    @property
    def slots(self) -> int: ...
    def progress_reported(self) -> list[tuple[str, list[Any]]]: ...


class MetricsError(UsageError, ValueError):
    """The --metrics address is malformed or cannot be bound."""


@dataclass
class Counters:
    """What the loop counts; read by the collector at scrape time."""

    beats: int = 0
    beats_missing: int = 0  # heartbeats numbered by a child that never arrived (gaps in sequence numbers)
    rejected: dict[str, int] = field(default_factory=dict)
    spawned: int = 0
    attempts: dict[str, int] = field(default_factory=dict)  # by outcome
    kills: dict[str, int] = field(default_factory=dict)  # by reason
    callback_errors: int = 0
    jobs: dict[str, int] = field(default_factory=dict)  # by state, refreshed with the title
    ticks: dict[str, int] = field(default_factory=dict)  # periodic ticks: inserted | taken (by another) | skipped
    pools: list[dict[str, Any]] = field(default_factory=list)  # each pool's capacity and slots used, with `jobs`
    histograms: "Histograms | None" = None  # with --metrics: observed once per attempt or callback (serve)

    def reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1

    def count(self, table: dict[str, int], label: str) -> None:
        table[label] = table.get(label, 0) + 1


class Histograms:
    """Kept whether or not metrics are served: one observation per attempt is cheap."""

    def __init__(self, registry: "CollectorRegistry") -> None:
        from prometheus_client import Histogram

        self.job_duration = Histogram("phoenix_attempt_duration_seconds", "Wall time of each attempt",
                                      ["outcome"], buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400),
                                      registry=registry)
        for outcome in Outcome:  # every outcome's series exists from the start, at 0 (see collect)
            self.job_duration.labels(str(outcome))
        self.detection_latency = Histogram(
            "phoenix_hang_detection_delay_seconds", "Kill time minus (last beat + heartbeat_timeout)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=registry)
        self.callback_duration = Histogram("phoenix_callback_duration_seconds", "Wall time of each callback run",
                                           buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 30, 120), registry=registry)


class _MasterCollector:
    """Reads the loop's counters at scrape time (prometheus_client calls collect())."""

    def __init__(self, master: MetricsSource) -> None:
        self.master = master

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.master
        c = m.counters
        # Every known label is exported from the start, at 0: a rate() or an
        # alert on a series that does not exist yet sees nothing.
        yield _labelled(GaugeMetricFamily("phoenix_jobs", "Jobs in the journal by state", labels=["state"]),
                        _with_zeros([str(s) for s in JobState], c.jobs))
        yield _labelled(CounterMetricFamily("phoenix_attempts", "Attempts ended, by outcome", labels=["outcome"]),
                        _with_zeros([str(o) for o in Outcome], c.attempts))
        yield _labelled(CounterMetricFamily("phoenix_kills", "Children killed by Phoenix, by reason",
                                            labels=["reason"]), _with_zeros([str(r) for r in KillReason], c.kills))
        yield CounterMetricFamily("phoenix_heartbeats_received", "Heartbeat messages accepted", value=c.beats)
        yield CounterMetricFamily("phoenix_heartbeats_missing", "Heartbeats a child numbered that never arrived",
                                  value=c.beats_missing)
        yield _labelled(CounterMetricFamily("phoenix_heartbeats_rejected", "Heartbeat connections closed, by reason",
                                            labels=["reason"]), _with_zeros(REJECT_REASONS, c.rejected))
        yield CounterMetricFamily("phoenix_spawned", "Children forked by this master", value=c.spawned)
        used = GaugeMetricFamily("phoenix_pool_used", "Slots of each pool held by running attempts, every master's",
                                 labels=["pool"])
        capacity = GaugeMetricFamily("phoenix_pool_capacity", "Each pool's capacity", labels=["pool"])
        for pool in c.pools:
            used.add_metric([pool["pool"]], pool["used"])
            capacity.add_metric([pool["pool"]], pool["capacity"])
        yield used
        yield capacity
        yield _labelled(CounterMetricFamily("phoenix_ticks", "Periodic ticks seen by this master: inserted, taken "
                                            "(another master inserted it first), skipped (overlap)",
                                            labels=["result"]), _with_zeros(TICK_RESULTS, c.ticks))
        yield CounterMetricFamily("phoenix_callback_errors", "Callbacks that raised or timed out",
                                  value=c.callback_errors)
        yield CounterMetricFamily("phoenix_replacements", "Master replacements recorded in the journal",
                                  value=m.replacements)
        yield GaugeMetricFamily("phoenix_master_generation", "Generation of the running master", value=m.generation)
        yield GaugeMetricFamily("phoenix_children_running", "Children being watched", value=len(m.children))
        yield GaugeMetricFamily("phoenix_workers", "Concurrent child slots", value=m.slots)
        # One series per running job that calls phoenix.progress() (at most the slots), gone when it ends.
        done = GaugeMetricFamily("phoenix_job_progress_done", "A running job's phoenix.progress() done",
                                 labels=["job"])
        total = GaugeMetricFamily("phoenix_job_progress_total", "A running job's phoenix.progress() total",
                                  labels=["job"])
        for key, (done_value, total_value, _note) in m.progress_reported():
            done.add_metric([key], done_value)
            if total_value is not None:
                total.add_metric([key], total_value)
        yield done
        yield total


TICK_RESULTS = ("inserted", "taken", "skipped")
# Every reason a heartbeat or control connection is rejected for (Counters.reject):
# exported at 0 from the start. tests/unit/test_metric_labels.py checks that the
# code counts no reason missing here.
REJECT_REASONS = (
    "fd_shortage", "foreign_uid", "unknown_pid", "oversized", "malformed", "wrong_attempt",
    "foreign_uid_control", "control connection shed", "control connection evicted", "control request timeout",
    "oversized control request", "malformed control request", "failed control request",
)


def _with_zeros(labels: Iterable[str], values: dict[str, int]) -> dict[str, int]:
    return {**dict.fromkeys(labels, 0), **values}


def _labelled(family: Any, values: dict[str, int]) -> Any:
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text  # a bare port binds loopback only
    try:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise MetricsError(f"--metrics wants HOST:PORT or PORT (got {text!r}), e.g. 127.0.0.1:9464") from None
    return host.strip("[]") or "127.0.0.1", number


def serve(master: MetricsSource, address: str) -> tuple[Histograms, tuple[str, int]]:
    """Start the exposition server; returns the histograms to observe and the bound (host, port)."""
    from prometheus_client import CollectorRegistry, start_http_server

    host, port = parse_address(address)
    registry = CollectorRegistry()
    registry.register(_MasterCollector(master))
    histograms = Histograms(registry)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsError(f"cannot serve metrics on {host}:{port}: {exc.strerror}; "
                           "choose another --metrics address") from None
    # An AF_INET/AF_INET6 server's host is a str (the stubs also allow a Unix socket's bytes).
    return histograms, (cast(str, server.server_address[0]), server.server_address[1])
