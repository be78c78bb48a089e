"""An OpenTelemetry span per attempt (the `otel` setting, the `otel` extra).

The recorder imports this module only when the setting is on, so with it off
no `opentelemetry` module is loaded in the master, nor inherited by a job's
child. The span is made where the master records an attempt's end, not in the
child: the master sees every end (a child killed, crashed or lost makes no
span of its own) and knows the outcome the store took.

Spans go to the global tracer provider, which the app sets up at import (its
exporter, its resource); until it does, OpenTelemetry's API drops them.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from phoenix.rules.states import Outcome

TRACER_NAME = "phoenix"


def attempt_ended(*, key: str, target: str, number: int, outcome: Outcome, reason: str | None, node: str,
                  duration: float | None) -> None:
    """One finished span for an attempt that ran `duration` seconds (None: not
    known, e.g. found ended after a restart) and ended as `outcome`."""
    end_ns = time.time_ns()
    start_ns = end_ns - int(duration * 1e9) if duration is not None and duration > 0 else end_ns
    attributes: dict[str, str | int] = {
        "phoenix.job.key": key,
        "phoenix.job.target": target,
        "phoenix.attempt.number": number,
        "phoenix.attempt.outcome": str(outcome),
        "phoenix.node": node,
    }
    if reason:
        attributes["phoenix.attempt.reason"] = reason
    span = trace.get_tracer(TRACER_NAME).start_span(f"phoenix.attempt {target}", kind=SpanKind.CONSUMER,
                                                    attributes=attributes, start_time=start_ns)
    if outcome != Outcome.FINISHED:
        span.set_status(Status(StatusCode.ERROR, reason or str(outcome)))
    span.end(end_time=end_ns)
