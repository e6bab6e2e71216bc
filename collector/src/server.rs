//! Starting and stopping the collector's listeners.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use oxeye_model::ingest::Ingest;
use oxeye_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use oxeye_model::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::CollectorConfig;
use crate::batcher::{Batcher, BatcherConfig};
use crate::grpc::OtlpGrpc;
use crate::memory::MemoryBudget;
use crate::metrics::CollectorMetrics;
use crate::pipeline::{Pipeline, Pipelines};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} for {what}: {source}; is another process using the port?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up TLS for {what}: {reason}")]
    Tls { what: &'static str, reason: String },
}

/// A collector that is serving. Dropping it does not stop it; call [`RunningCollector::shutdown`].
pub struct RunningCollector {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop_listeners: CancellationToken,
    stop_batcher: CancellationToken,
    servers: Vec<JoinHandle<()>>,
    batchers: Vec<JoinHandle<()>>,
}

/// Binds both listeners and starts serving; rows go to `sink` once batched.
pub async fn start(
    config: &CollectorConfig,
    sink: Arc<dyn Ingest>,
    registry: &mut Registry,
) -> Result<RunningCollector, ServerError> {
    start_with_tenants(config, sink, BTreeMap::new(), registry).await
}

/// Like [`start`], with a sink per tenant: rows sent with a tenant's token go to that
/// tenant's sink, the rest to `sink`. Each tenant has its own batcher; the memory budget and
/// the metrics are shared.
pub async fn start_with_tenants(
    config: &CollectorConfig,
    sink: Arc<dyn Ingest>,
    tenant_sinks: BTreeMap<String, Arc<dyn Ingest>>,
    registry: &mut Registry,
) -> Result<RunningCollector, ServerError> {
    let metrics = CollectorMetrics::register(registry);
    let stop_batcher = CancellationToken::new();
    let memory = MemoryBudget::new(config.memory_budget_bytes);
    let mut batchers = Vec::new();
    let mut pipeline_for = |sink: Arc<dyn Ingest>| {
        let (batcher, task) = Batcher::spawn(
            sink,
            BatcherConfig {
                max_rows: config.batch_max_rows,
                max_delay: config.batch_max_delay,
                queue_capacity: config.batch_queue_capacity,
                max_in_flight: config.max_in_flight_flushes,
                retry_after: config.retry_after,
            },
            metrics.clone(),
            stop_batcher.clone(),
        );
        batchers.push(task);
        Arc::new(Pipeline::new(
            batcher,
            memory.clone(),
            metrics.clone(),
            config.retry_after,
            config.attribute_limits,
        ))
    };
    let default = pipeline_for(sink);
    let tenants = tenant_sinks
        .into_iter()
        .map(|(tenant, sink)| (tenant, pipeline_for(sink)))
        .collect();
    let pipeline = Pipelines::new(default, tenants);

    let grpc_listener = TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|source| ServerError::Bind {
            what: "OTLP/gRPC",
            addr: config.grpc_listen,
            source,
        })?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| ServerError::Bind {
            what: "OTLP/HTTP",
            addr: config.http_listen,
            source,
        })?;
    let grpc_addr = grpc_listener.local_addr().unwrap_or(config.grpc_listen);
    let http_addr = http_listener.local_addr().unwrap_or(config.http_listen);

    let stop_listeners = CancellationToken::new();
    let max = config.max_request_bytes;
    // gRPC health checking (grpc.health.v1) for the OTLP services and the server as a whole:
    // SERVING until shutdown begins.
    let (health, health_service) = tonic_health::server::health_reporter();
    set_otlp_health(&health, tonic_health::ServingStatus::Serving).await;
    // Health checks stay open; the OTLP services need a token with the ingest role.
    let check = config.auth.grpc_interceptor(oxeye_auth::Access::Ingest);
    let mut grpc = tonic::transport::Server::builder();
    if let Some(tls) = config.tls.server() {
        grpc = grpc.tls_config(tls.grpc()).map_err(|e| ServerError::Tls {
            what: "OTLP/gRPC",
            reason: e.to_string(),
        })?;
    }
    let grpc = grpc
        .add_service(health_service)
        .add_service(InterceptedService::new(
            OtlpGrpc::<ExportTraceServiceRequest>::new(pipeline.clone(), max),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            OtlpGrpc::<ExportLogsServiceRequest>::new(pipeline.clone(), max),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            OtlpGrpc::<ExportMetricsServiceRequest>::new(pipeline.clone(), max),
            check,
        ));
    let grpc_stop = stop_listeners.clone();
    let health_stop = stop_listeners.clone();
    tokio::spawn(async move {
        health_stop.cancelled().await;
        set_otlp_health(&health, tonic_health::ServingStatus::NotServing).await;
    });
    let grpc_task = tokio::spawn(async move {
        // Without TCP_NODELAY, HTTP/2's small frames (acknowledgements, window updates) wait
        // for the peer's delayed ACK: 40 ms stalls on a busy connection.
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        if let Err(e) = grpc
            .serve_with_incoming_shutdown(incoming, grpc_stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "OTLP/gRPC server failed");
        }
    });

    let app = crate::http::router(
        pipeline,
        config.max_request_bytes,
        config.max_decompressed_bytes,
    )
    .layer(axum::middleware::from_fn_with_state(
        config.auth.clone(),
        oxeye_auth::otlp_guard,
    ));
    let http_stop = stop_listeners.clone();
    let http_tls = config.tls.clone();
    let http_task = tokio::spawn(async move {
        if let Err(e) = oxeye_tls::serve_http(
            http_listener,
            app,
            http_tls.server(),
            http_stop.cancelled_owned(),
        )
        .await
        {
            tracing::error!(error = %e, "OTLP/HTTP server failed");
        }
    });
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "OTLP receivers listening");
    Ok(RunningCollector {
        grpc_addr,
        http_addr,
        stop_listeners,
        stop_batcher,
        servers: vec![grpc_task, http_task],
        batchers,
    })
}

impl RunningCollector {
    /// Stops accepting, lets in-flight requests finish, and flushes every batch the store has
    /// not yet acknowledged.
    pub async fn shutdown(self) {
        self.stop_listeners.cancel();
        for s in self.servers {
            let _ = s.await;
        }
        self.stop_batcher.cancel();
        for batcher in self.batchers {
            let _ = batcher.await;
        }
        tracing::info!("collector stopped");
    }
}

/// Sets the health of the OTLP services and, when not serving, of the server as a whole ("").
async fn set_otlp_health(
    health: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    use tonic::server::NamedService;
    for service in [
        OtlpGrpc::<ExportTraceServiceRequest>::NAME,
        OtlpGrpc::<ExportLogsServiceRequest>::NAME,
        OtlpGrpc::<ExportMetricsServiceRequest>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
    if status != tonic_health::ServingStatus::Serving {
        health.set_service_status("", status).await;
    }
}
