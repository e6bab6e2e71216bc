// Send one trace, one log record and one metric to oxeye with the OpenTelemetry Node.js SDK.
//
// Requirements: Node.js 18.19+ (tested with Node 20 and @opentelemetry/sdk-node 0.223, which
// brings the OTLP exporters for every protocol with it):
//
//   npm install @opentelemetry/api @opentelemetry/api-logs @opentelemetry/sdk-node
//
// Run it against a running `oxeye serve`, over OTLP/HTTP with protobuf bodies (port 4318, the
// default here):
//
//   node examples/snippets/node_app.mjs
//
// or over OTLP/gRPC (port 4317):
//
//   OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 \
//     node examples/snippets/node_app.mjs
//
// It prints the trace id; look it up with `curl -s localhost:7700/api/v1/traces/<trace id>`.

import { SpanKind, metrics, trace } from '@opentelemetry/api';
import { SeverityNumber, logs } from '@opentelemetry/api-logs';
import { NodeSDK, resources } from '@opentelemetry/sdk-node';

// The Node SDK builds its OTLP exporters from the standard environment variables, exactly as it
// would for any app started with them; these are the defaults for talking to a local oxeye.
// With http/protobuf the exporters append /v1/traces, /v1/logs and /v1/metrics to the endpoint.
process.env.OTEL_EXPORTER_OTLP_PROTOCOL ??= 'http/protobuf';
const grpc = process.env.OTEL_EXPORTER_OTLP_PROTOCOL === 'grpc';
process.env.OTEL_EXPORTER_OTLP_ENDPOINT ??= grpc ? 'http://127.0.0.1:4317' : 'http://127.0.0.1:4318';
process.env.OTEL_TRACES_EXPORTER ??= 'otlp';
process.env.OTEL_LOGS_EXPORTER ??= 'otlp';
process.env.OTEL_METRICS_EXPORTER ??= 'otlp';
process.env.OTEL_METRIC_EXPORT_INTERVAL ??= '5000';

const sdk = new NodeSDK({
  serviceName: 'node-snippet',
  resource: resources.resourceFromAttributes({
    'service.version': '0.1.0',
    'deployment.environment': 'demo',
  }),
});
sdk.start();

const tracer = trace.getTracer('oxeye-snippet');
const logger = logs.getLogger('oxeye-snippet');
const requests = metrics.getMeter('oxeye-snippet').createCounter('hello.requests', {
  description: 'Requests served',
  unit: '{request}',
});

const traceId = tracer.startActiveSpan(
  'GET /hello',
  { kind: SpanKind.SERVER, attributes: { 'http.request.method': 'GET', 'http.route': '/hello' } },
  (span) => {
    tracer.startActiveSpan(
      'SELECT greetings',
      {
        kind: SpanKind.CLIENT,
        attributes: {
          'db.system.name': 'postgresql',
          'db.operation.name': 'SELECT',
          'db.query.text': 'SELECT text FROM greetings LIMIT 1',
        },
      },
      (query) => query.end(),
    );
    // Emitted inside the active span, so the record carries its trace and span ids.
    logger.emit({
      severityNumber: SeverityNumber.INFO,
      severityText: 'INFO',
      body: 'said hello',
      attributes: { 'http.route': '/hello' },
    });
    requests.add(1, { 'http.route': '/hello', 'http.response.status_code': 200 });
    span.setAttribute('http.response.status_code', 200);
    span.end();
    return span.spanContext().traceId;
  },
);

// Shutting down flushes what the batch processors and the metric reader still hold.
await sdk.shutdown();
console.log(traceId);
