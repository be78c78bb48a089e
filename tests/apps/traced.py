"""An app for tests/test_tracing.py. With PHOENIX_OTEL on, it sets up
OpenTelemetry's SDK at import (as an app does), each span written as one JSON
line to $PHOENIX_TEST_SPANS; off, it imports nothing of OpenTelemetry. Its
job reports the opentelemetry modules loaded in the child, its callback (run
in the master) those of the master, both to $PHOENIX_TEST_PROBE."""

import json
import os
import sys

import phoenix

app = phoenix.App(heartbeat_interval=0.2, heartbeat_timeout=1.0, backoff_base=0.05, backoff_cap=0.2)

if os.environ.get("PHOENIX_OTEL", "").lower() in ("1", "true", "yes", "on"):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider()
    spans = open(os.environ["PHOENIX_TEST_SPANS"], "a")  # noqa: SIM115 - open for the process's life
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
        out=spans, formatter=lambda span: span.to_json(indent=None) + "\n")))
    trace.set_tracer_provider(provider)


def _otel_modules():
    return sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry")


@app.job
def probe(params):
    return {"child": _otel_modules()}


@app.job(retries=0)
def fails(params):
    raise RuntimeError("failed on purpose")


@app.on_finished
def finished(job, result):
    with open(os.environ["PHOENIX_TEST_PROBE"], "w") as f:
        json.dump({"child": result["child"], "master": _otel_modules()}, f)
