//! The OTLP/HTTP receiver end to end, short of the store: any path, content type, content
//! encoding and body, through the real router (size caps, decompression, decoding, attribute
//! caps, conversion, batching) into a sink that drops what it gets. No input may crash it or
//! get a 500. The first byte picks path, content type and encoding.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use libfuzzer_sys::fuzz_target;
use oxeye_collector::batcher::{Batcher, BatcherConfig};
use oxeye_collector::limits::AttributeLimits;
use oxeye_collector::memory::MemoryBudget;
use oxeye_collector::metrics::CollectorMetrics;
use oxeye_collector::pipeline::Pipeline;
use oxeye_model::SignalBatch;
use oxeye_model::ingest::{Ingest, IngestError};
use tower::ServiceExt;

struct Drop;

#[async_trait::async_trait]
impl Ingest for Drop {
    async fn ingest(&self, _batches: Vec<SignalBatch>) -> Result<(), IngestError> {
        Ok(())
    }
}

fn receiver() -> &'static (tokio::runtime::Runtime, Router) {
    static RECEIVER: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    RECEIVER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let router = rt.block_on(async {
            let metrics =
                CollectorMetrics::register(&mut prometheus_client::registry::Registry::default());
            let (batcher, _task) = Batcher::spawn(
                Arc::new(Drop),
                BatcherConfig {
                    max_rows: 1,
                    max_delay: Duration::from_millis(1),
                    queue_capacity: 64,
                    max_in_flight: 4,
                    retry_after: Duration::from_secs(1),
                },
                metrics.clone(),
                tokio_util::sync::CancellationToken::new(),
            );
            let pipeline = Arc::new(Pipeline::new(
                batcher,
                MemoryBudget::new(64 << 20),
                metrics,
                Duration::from_secs(1),
                AttributeLimits::default(),
            ));
            let pipelines = oxeye_collector::Pipelines::new(pipeline, Default::default());
            oxeye_collector::http::router(pipelines, 1 << 20, 4 << 20)
        });
        (rt, router)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let path = ["/v1/traces", "/v1/logs", "/v1/metrics", "/v1/profiles"][pick as usize % 4];
    let content_type = [
        Some("application/x-protobuf"),
        Some("application/json"),
        Some("text/plain"),
        None,
    ][(pick as usize >> 2) % 4];
    let encoding = [None, Some("gzip"), Some("zstd"), Some("br")][(pick as usize >> 4) % 4];
    let mut request = http::Request::post(path);
    if let Some(t) = content_type {
        request = request.header("content-type", t);
    }
    if let Some(e) = encoding {
        request = request.header("content-encoding", e);
    }
    let request = request.body(Body::from(body.to_vec())).expect("a request");
    let (rt, router) = receiver();
    let response = rt
        .block_on(router.clone().oneshot(request))
        .expect("the router answers");
    assert!(
        !response.status().is_server_error() || response.status().as_u16() == 503,
        "{} for {path} {content_type:?} {encoding:?}",
        response.status()
    );
});
