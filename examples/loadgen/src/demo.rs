//! `--workload demo`: the traffic of `oxeye-demo`'s simulated shop, produced by the same code
//! through the OpenTelemetry SDK into memory, then sent by the load generator's own
//! connections. Spans, logs and metrics keep the demo's shapes and proportions (fan-out,
//! retries, slow paths, errors, the occasional 10k-span catalog import) while the load
//! generator keeps control of rate, connections and acknowledgement accounting.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use oxeye_demo::catalog::{self, CatalogImporter};
use oxeye_demo::shop::{self, Shop};
use oxeye_demo::telemetry::{Destination, PipelineConfig, ServiceIdentity, Telemetry};
use oxeye_model::metrics::point_count;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::shapes::TraceBatch;

/// How often the catalog import (the large trace) runs, and how big it is.
#[derive(Debug, Clone, Copy)]
pub struct LargeTraces {
    /// Start one every this many shop requests (0: never).
    pub every_requests: u64,
    /// Spans per import trace.
    pub spans: u64,
}

/// One connection's simulated shop.
pub struct DemoWorkload {
    telemetry: Telemetry,
    shop: Shop,
    importer: CatalogImporter,
    rng: SmallRng,
    large: LargeTraces,
    requests: u64,
}

impl DemoWorkload {
    pub fn new(seed: u64, error_rate: f64, large: LargeTraces) -> anyhow::Result<DemoWorkload> {
        let config = PipelineConfig {
            destination: Destination::Memory,
            // Queues, intervals and the export batch size only apply to OTLP pipelines.
            queue_size: 0,
            export_interval: std::time::Duration::ZERO,
            metrics_interval: std::time::Duration::ZERO,
            environment: "loadtest".into(),
        };
        let identities: Vec<ServiceIdentity> = shop::SERVICES
            .iter()
            .copied()
            .chain([catalog::IDENTITY])
            .collect();
        let telemetry = Telemetry::start(&identities, &config)?;
        let shop = Shop::new(&telemetry, error_rate)?;
        // The importer paces itself on the exporter's backlog, which is always empty here.
        let importer = CatalogImporter::new(&telemetry, usize::MAX)?;
        Ok(DemoWorkload {
            telemetry,
            shop,
            importer,
            rng: SmallRng::seed_from_u64(seed),
            large,
            requests: 0,
        })
    }

    /// Whole shop requests (and, when due, a catalog import) until at least `target_spans`
    /// spans were produced; returns them and the log records they emitted.
    pub async fn traces(&mut self, target_spans: usize) -> TraceBatch {
        let mut traces = ExportTraceServiceRequest::default();
        let mut logs = ExportLogsServiceRequest::default();
        let (mut spans, mut log_records) = (0, 0);
        while spans < target_spans.max(1) {
            self.shop.handle_request(&mut self.rng);
            self.requests += 1;
            if self.large.every_requests > 0
                && self.large.spans > 0
                && self.requests.is_multiple_of(self.large.every_requests)
            {
                let seed = self.rng.random::<u64>();
                self.importer.run(seed, self.large.spans).await;
            }
            for pipeline in self.telemetry.pipelines() {
                for rs in pipeline.take_spans() {
                    spans += rs
                        .scope_spans
                        .iter()
                        .map(|ss| ss.spans.len())
                        .sum::<usize>();
                    traces.resource_spans.push(rs);
                }
                for rl in pipeline.take_logs() {
                    log_records += rl
                        .scope_logs
                        .iter()
                        .map(|sl| sl.log_records.len())
                        .sum::<usize>();
                    logs.resource_logs.push(rl);
                }
            }
        }
        TraceBatch {
            traces,
            logs,
            spans,
            log_records,
        }
    }

    /// One metrics collection of every service (cumulative, as the demo exports them) and its
    /// number of data points.
    pub fn metrics(&mut self) -> anyhow::Result<(ExportMetricsServiceRequest, usize)> {
        let mut request = ExportMetricsServiceRequest::default();
        for pipeline in self.telemetry.pipelines() {
            request.resource_metrics.extend(pipeline.collect_metrics()?);
        }
        let points = request.resource_metrics.iter().map(points_of).sum();
        Ok((request, points))
    }
}

fn points_of(rm: &ResourceMetrics) -> usize {
    rm.scope_metrics
        .iter()
        .flat_map(|sm| &sm.metrics)
        .map(point_count)
        .sum()
}
