"""Send one trace, one log record and one metric to oxeye with the OpenTelemetry Python SDK.

Requirements (Python 3.9+; written against the versions oxeye's end-to-end tests use):

    pip install opentelemetry-sdk==1.45.2 opentelemetry-exporter-otlp==1.45.2

Run it against a running `oxeye serve`, over OTLP/gRPC (port 4317, the default here):

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
        python3 examples/snippets/python_app.py

or over OTLP/HTTP with protobuf bodies (port 4318):

    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
        python3 examples/snippets/python_app.py

It prints the trace id; look it up with
    curl -s localhost:7700/api/v1/traces/<trace id>
"""

import os
import time

from opentelemetry import metrics, trace
from opentelemetry._logs import SeverityNumber, set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# The exporters read these when they are created; default to oxeye's gRPC port.
os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
PROTOCOL = os.environ.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")

if PROTOCOL == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
else:
    # http/protobuf: the exporters append /v1/traces, /v1/logs and /v1/metrics to the endpoint.
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter


def main() -> None:
    resource = Resource.create(
        {
            "service.name": "python-snippet",
            "service.version": "0.1.0",
            "deployment.environment": "demo",
        }
    )

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)

    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    set_logger_provider(logger_provider)

    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[
            PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=5000)
        ],
    )
    metrics.set_meter_provider(meter_provider)

    tracer = trace.get_tracer("oxeye-snippet")
    logger = logger_provider.get_logger("oxeye-snippet")
    requests = metrics.get_meter("oxeye-snippet").create_counter(
        "hello.requests", unit="{request}", description="Requests served"
    )

    with tracer.start_as_current_span(
        "GET /hello",
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": "GET", "http.route": "/hello"},
    ) as span:
        with tracer.start_as_current_span(
            "SELECT greetings",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.operation.name": "SELECT",
                "db.query.text": "SELECT text FROM greetings LIMIT 1",
            },
        ):
            time.sleep(0.01)
        # Emitted while the span is current, so the record carries its trace and span ids.
        logger.emit(
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            body="said hello",
            attributes={"http.route": "/hello"},
        )
        requests.add(1, {"http.route": "/hello", "http.response.status_code": 200})
        span.set_attribute("http.response.status_code", 200)
        trace_id = format(span.get_span_context().trace_id, "032x")

    # Shutting down flushes what the batch processors and the metric reader still hold.
    tracer_provider.shutdown()
    logger_provider.shutdown()
    meter_provider.shutdown()
    print(trace_id)


if __name__ == "__main__":
    main()
