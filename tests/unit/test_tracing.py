"""The attempt's span in-process: the recorder, on a fake clock and a real
SQLite journal, makes one span per recorded end on the global tracer
provider (here the SDK's, with its in-memory exporter) when `otel` is on,
and none when it is off."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from phoenix.rules.states import KillReason
from phoenix.wire import heartbeat as protocol
from tests.unit.test_recorder import EXIT3, NOOP, Recording, child, parts

__all__ = ["child", "parts"]  # the fixtures, shared with test_recorder

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The exporter of the process's one tracer provider (OpenTelemetry sets the global provider once)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def test_a_finished_attempt_makes_one_span_with_the_jobs_attributes_and_its_length(
        parts: Recording, child: subprocess.Popen[bytes], spans: InMemorySpanExporter) -> None:
    parts.config = dataclasses.replace(parts.config, otel=True, node="node-a")
    attempt = parts.begin(NOOP, child.pid, key="report:7")
    parts.clock.advance(2.5)
    attempt.final, attempt.final_held = {protocol.KIND: "finished", protocol.RESULT: None}, True
    parts.recorder.conclude(attempt, 0, None)
    (span,) = spans.get_finished_spans()
    assert span.name == f"phoenix.attempt {NOOP}"
    assert dict(span.attributes or {}) == {
        "phoenix.job.key": "report:7", "phoenix.job.target": NOOP, "phoenix.attempt.number": 1,
        "phoenix.attempt.outcome": "finished", "phoenix.node": "node-a"}
    assert span.start_time is not None and span.end_time is not None
    assert span.end_time - span.start_time == 2_500_000_000  # the fake clock's 2.5 s, not the wall's
    assert span.status.status_code == StatusCode.UNSET


def test_a_killed_attempt_is_an_error_span_with_its_reason(
        parts: Recording, child: subprocess.Popen[bytes], spans: InMemorySpanExporter) -> None:
    parts.config = dataclasses.replace(parts.config, otel=True)
    attempt = parts.begin(EXIT3, child.pid)
    attempt.kill_reason, attempt.kill_detail = KillReason.HEARTBEAT_TIMEOUT, "heartbeat_timeout: 5.00 s"
    parts.recorder.conclude(attempt, signal.SIGKILL, None)
    (span,) = spans.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert (attributes["phoenix.attempt.outcome"], attributes["phoenix.attempt.reason"]) == (
        "killed", "heartbeat_timeout")
    assert attributes["phoenix.node"]  # unset: the host name and the state directory
    assert span.status.status_code == StatusCode.ERROR


def test_off_no_span(parts: Recording, child: subprocess.Popen[bytes], spans: InMemorySpanExporter) -> None:
    attempt = parts.begin(NOOP, child.pid)
    attempt.final, attempt.final_held = {protocol.KIND: "finished", protocol.RESULT: None}, True
    parts.recorder.conclude(attempt, 0, None)
    assert parts.job()["state"] == "finished" and spans.get_finished_spans() == ()
