"""OpenTelemetry: tracing and metrics for the gateway and the workers, the exporter chosen by configuration.

`otel_exporter`: "none" (default), "console", "otlp" (the standard OTEL_EXPORTER_OTLP_* variables), or
"file:PATH" (one JSON object per finished span, appended; several processes may share the file: the tests
read one trace across the gateway and worker processes from it). A job's trace starts at the SubmitJob RPC;
its context travels in the Celery message (W3C traceparent) so the worker's spans join it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

TRACER_NAME = "cm3leon.serving"
_configured = False


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span as one JSON line: name, trace and span ids, parent, service, attributes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            context = span.get_span_context()
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": f"{context.trace_id:032x}",
                        "span_id": f"{context.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "service": span.resource.attributes.get("service.name"),
                        "pid": os.getpid(),
                        "attributes": {k: v for k, v in (span.attributes or {}).items()},
                        "status": span.status.status_code.name,
                    },
                    default=str,
                )
            )
        with self._lock, open(self.path, "a") as handle:  # one write per batch: lines stay whole across processes
            handle.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS


def setup_telemetry(exporter: str, service_name: str) -> None:
    """Install the tracer and meter providers once per process ("none": the API's no-op defaults stay)."""
    global _configured
    if _configured or exporter == "none":
        return
    _configured = True
    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource)
    if exporter.startswith("file:"):
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(exporter.removeprefix("file:"))))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        metrics.set_meter_provider(
            MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(ConsoleMetricExporter())])
        )
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        metrics.set_meter_provider(
            MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())])
        )
    trace.set_tracer_provider(provider)


def shutdown_telemetry() -> None:
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def inject_context() -> dict[str, str]:
    """The current trace context as a carrier (for the Celery message)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, str] | None) -> Any:
    return propagate.extract(dict(carrier or {}))


class Metrics:
    """The serving metrics: queue depth, jobs by state, job duration, tokens per second."""

    def __init__(self) -> None:
        meter = metrics.get_meter(TRACER_NAME)
        self.jobs = meter.create_counter("cm3leon.jobs", description="jobs by kind and state transition")
        self.queue_depth = meter.create_gauge("cm3leon.queue.depth", description="queued jobs over all queues")
        self.duration = meter.create_histogram("cm3leon.job.duration", unit="s", description="job run time")
        self.tokens_per_s = meter.create_histogram("cm3leon.decode.tokens_per_second", unit="1/s")
