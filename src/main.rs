//! `oxeye`: one binary, several roles. `oxeye serve` runs every role in one process on a local
//! data directory; `oxeye collector|store|query` run the roles apart (scale-out).
//!
//! This file holds only the command line, configuration and the wiring of the roles.

mod cluster;
mod config;
mod queue;
mod self_trace;
mod tenants;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand};
use oxeye_model::ingest::Ingest;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigFile, ServeArgs};

// OTLP decoding and Arrow building allocate many small strings and buffers per request; with
// mimalloc decode + convert runs about 1.6x faster than with glibc's allocator (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// oxeye: traces, logs and metrics from OpenTelemetry, stored in Parquet, queried with SQL.
#[derive(Debug, Parser)]
#[command(name = "oxeye", version, about, long_about = None)]
struct Cli {
    /// TOML config file; its [serve], [collector], [store] and [query] sections set the same
    /// options as the flags. Precedence: flag > environment variable > file > default.
    #[arg(long, global = true, env = "OXEYE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log filter, e.g. `info` or `oxeye_store=debug,info`
    #[arg(long, global = true, env = "OXEYE_LOG", default_value = "info")]
    log: String,

    /// Log format
    #[arg(long, global = true, env = "OXEYE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every role in one process: OTLP receivers, store, SQL and HTTP API, PostgreSQL
    /// protocol, web UI and alerting, on a local data directory
    Serve(ServeArgs),
    /// Run an edge collector: OTLP receivers that route each row by shard key, through a
    /// persistent queue per shard, to every replica of its shard in the --metastore's shard map
    /// over Arrow Flight (scale-out)
    Collector(ServeArgs),
    /// Run a store node: one replica of shards --shard-ids (or --first-shard..) with their WAL,
    /// taking writes over Arrow Flight (--flight-listen), segments in --object-store, catalog
    /// and shard leases in --metastore (scale-out)
    Store(ServeArgs),
    /// Run a query node: SQL, APIs, UI and alerting over the segments committed to the shared
    /// --metastore and --object-store, plus the unflushed rows of live store nodes, read over
    /// Arrow Flight (scale-out)
    Query(ServeArgs),
}

/// Logs to stderr (text or JSON, filtered by `filter`) and, with `self_trace`, records oxeye's
/// own spans for [`self_trace`] to store once the process has somewhere to store them.
fn init_logging(
    filter: &str,
    format: &str,
    self_trace: bool,
) -> Option<self_trace::SelfTraceQueue> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    // Log lines only: spans exist for --self-trace, and without it nothing records them.
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .and(tracing_subscriber::filter::filter_fn(|m| m.is_event()));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if format == "json" {
        logs.json().with_filter(filter).boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    let (spans, queue) = match self_trace {
        true => {
            let (layer, queue) = self_trace::layer();
            (Some(layer), Some(queue))
        }
        false => (None, None),
    };
    tracing_subscriber::registry().with(logs).with(spans).init();
    queue
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let file = ConfigFile::load(cli.config.as_deref())?;
    let (role, args) = match cli.command {
        Command::Serve(args) => (Role::All, args.over(file.serve)),
        Command::Collector(args) => (Role::Collector, args.over(file.collector)),
        Command::Store(args) => (Role::Store, args.over(file.store)),
        Command::Query(args) => (Role::Query, args.over(file.query)),
    };
    // Query nodes have no shards to store spans in; a store node's shards take collectors'
    // deliveries only (their replicas agree on rows by delivery positions).
    let can_self_trace = matches!(role, Role::All | Role::Collector);
    let self_trace = args.self_trace.unwrap_or(false) && can_self_trace;
    let spans = init_logging(&cli.log, &cli.log_format, self_trace);
    if args.self_trace == Some(true) && !can_self_trace {
        tracing::warn!(
            "--self-trace is available on `oxeye serve` and collectors only: query nodes have no \
             shards, and store nodes' shards take collectors' deliveries only; it is off here"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("oxeye-io")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        match role {
            Role::Collector => collector_role(args, spans).await,
            role => serve_role(args, role, spans).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

/// An edge collector: OTLP in, Flight out to the store nodes that own each row's shard.
async fn collector_role(
    args: ServeArgs,
    spans: Option<self_trace::SelfTraceQueue>,
) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let authenticated = config.auth.enabled();
    config.check_exposure(&[
        ("OTLP/gRPC", config.collector.grpc_listen, authenticated),
        ("OTLP/HTTP", config.collector.http_listen, authenticated),
        ("HTTP", config.http_listen, authenticated),
    ])?;
    let Some(url) = &config.metastore else {
        anyhow::bail!(
            "a collector finds the store nodes in the cluster's --metastore; give it one"
        );
    };
    let meta = Arc::new(
        oxeye_metastore::PgMetastore::connect(url)
            .await
            .context("cannot open the metastore")?,
    );
    let mut registry = Registry::default();
    let stop_cluster = CancellationToken::new();
    let queues = queue::Queues::new(
        config.data_dir.join("queue"),
        queue::QueueBudget::new(config.queue_bytes),
    )
    .with_context(|| {
        format!(
            "cannot open the collector's queue in {}",
            config.data_dir.join("queue").display()
        )
    })?;
    let quorum = queue::Quorum {
        replicas: config.write_quorum,
        timeout: config.write_quorum_timeout,
        outcomes: Default::default(),
    };
    registry.register(
        "oxeye_collector_write_quorum",
        "Writes acknowledged once their write quorum of replicas held them (outcome=met) or on \
         the queue's copy because too few replicas were reachable in time (outcome=degraded)",
        quorum.outcomes.clone(),
    );
    let cluster_router = cluster::ClusterRouter::start(
        meta,
        queues,
        quorum,
        config.tls.client().clone(),
        stop_cluster.clone(),
    )
    .with_context(|| {
        format!(
            "cannot open the collector's queue in {}",
            config.data_dir.join("queue").display()
        )
    })?;
    queue::register_metrics(
        cluster_router.queues().clone(),
        &mut registry,
        stop_cluster.clone(),
    );
    let router: Arc<dyn Ingest> = cluster_router;
    let stop_spans = CancellationToken::new();
    let spans = spans.map(|queue| {
        queue.start(
            router.clone(),
            vec![
                ("oxeye.role", "collector".to_string()),
                ("service.instance.id", config.http_listen.to_string()),
            ],
            &mut registry,
            stop_spans.clone(),
        )
    });
    let collector = oxeye_collector::start(&config.collector, router, &mut registry).await?;
    let ready = Arc::new(AtomicBool::new(true));
    let ops = oxeye_query::http::ops_router(oxeye_query::http::OpsState {
        registry: Arc::new(parking_lot::RwLock::new(registry)),
        ready: ready.clone(),
    });
    let stop_http = CancellationToken::new();
    let (_, http) = serve_http(
        config.http_listen,
        ops,
        &config.auth,
        &config.tls,
        stop_http.clone(),
    )
    .await?;
    tracing::info!(
        otlp_grpc = %collector.grpc_addr,
        otlp_http = %collector.http_addr,
        http = %config.http_listen,
        "oxeye collector is serving"
    );
    stop_signal().await;
    ready.store(false, Ordering::Relaxed);
    collector.shutdown().await;
    stop_spans.cancel();
    if let Some(task) = spans {
        let _ = task.await;
    }
    stop_cluster.cancel();
    stop_http.cancel();
    let _ = http.await;
    tracing::info!("oxeye collector stopped");
    Ok(())
}

/// Serves `router` on `addr` behind `auth`'s checks until `stop`; returns the bound address
/// and the server task.
async fn serve_http(
    addr: std::net::SocketAddr,
    router: axum::Router,
    auth: &oxeye_auth::Auth,
    tls: &oxeye_tls::Tls,
    stop: CancellationToken,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let router = router.layer(axum::middleware::from_fn_with_state(
        auth.clone(),
        oxeye_auth::api_guard,
    ));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for HTTP; is the port in use?"))?;
    let bound = listener.local_addr()?;
    let tls = tls.clone();
    let task = tokio::spawn(async move {
        if let Err(e) =
            oxeye_tls::serve_http(listener, router, tls.server(), stop.cancelled_owned()).await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((bound, task))
}

/// A span per HTTP request, named by method and route (not for probes, scrapes and the UI's
/// static files): the root of what a request did, for `--self-trace`. Layered on each API
/// router (see `tenants::api_router`), where the matched route is known.
async fn trace_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;

    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/metrics") || path.starts_with("/pkg/") {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "(unmatched)".into());
    let method = req.method().to_string();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("error", status.to_string());
    }
    response
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops oxeye");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// What one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Everything: OTLP receivers, store shards, SQL, APIs, UI, alerting.
    All,
    /// SQL, APIs, UI and alerting over what store nodes committed to a shared metastore and
    /// object store; no receivers, no shards, nothing written but alerting's records.
    Query,
    /// Shards that take writes over Arrow Flight, and the SQL/HTTP API over them (no alert
    /// evaluation: that is the query nodes' job).
    Store,
    /// OTLP receivers that route rows to store nodes through persistent queues.
    Collector,
}

async fn serve_role(
    args: ServeArgs,
    role: Role,
    spans: Option<self_trace::SelfTraceQueue>,
) -> anyhow::Result<()> {
    let mut config = args.resolve()?;
    if role != Role::All && (config.metastore.is_none() || config.object_store.is_none()) {
        anyhow::bail!(
            "the {role:?} role works in a cluster: give it the cluster's --metastore and \
             --object-store (or run `oxeye serve` for everything in one process)"
        );
    }
    match role {
        Role::Query => {
            config.store.shards = 0;
            config.store.shard_list = None;
        }
        Role::Store => {
            config.alert.evaluate = false;
            config.store.replicated = true;
        }
        Role::All | Role::Collector => {}
    }
    let authenticated = config.auth.enabled();
    let mut listeners = vec![
        ("HTTP", config.http_listen, authenticated),
        (
            "PostgreSQL (only loopback clients without --pg-password)",
            config.pg_listen,
            true,
        ),
    ];
    match role {
        Role::All => listeners.extend([
            ("OTLP/gRPC", config.collector.grpc_listen, authenticated),
            ("OTLP/HTTP", config.collector.http_listen, authenticated),
        ]),
        // Only mutual TLS authenticates Flight's peers (other nodes).
        Role::Store => listeners.push((
            "Arrow Flight (without --tls-client-ca)",
            config.flight_listen,
            config.tls.mutual(),
        )),
        Role::Query | Role::Collector => {}
    }
    config.check_exposure(&listeners)?;
    if !config.auth.tenants().is_empty()
        && (role != Role::All || config.metastore.is_some() || config.object_store.is_some())
    {
        anyhow::bail!(
            "tokens with a tenant work with `oxeye serve` on a local data directory so far: \
             remove `tenant` from the token file for cluster roles, --metastore and --object-store"
        );
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let mut registry = Registry::default();

    let storage = match &config.object_store {
        None => oxeye_store::Storage::local(&config.data_dir.join("objects")),
        Some(s3) => oxeye_store::Storage::s3(s3)
            .and_then(|s| s.with_read_cache(&config.data_dir.join("cache"), config.cache_bytes)),
    }
    .context("cannot set up the object store")?;
    let metastore = match &config.metastore {
        None => None,
        Some(url) => Some(Arc::new(
            oxeye_metastore::PgMetastore::connect(url)
                .await
                .context("cannot open the metastore")?,
        )),
    };
    let catalog: Arc<dyn oxeye_store::Metastore> = match &metastore {
        None => Arc::new(oxeye_store::FileMetastore::new(&config.data_dir)),
        Some(meta) => meta.clone(),
    };
    tracing::info!(
        object_store = storage.description(),
        metastore = config
            .metastore
            .as_deref()
            .map_or("local file".to_string(), oxeye_metastore::redact),
        "storage"
    );
    let store = oxeye_store::Store::open(config.store.clone(), storage, catalog, &mut registry)
        .await
        .context("cannot open the store")?;
    let router = tenants::store_sink(&store);
    let engine = oxeye_query::QueryEngine::new(store.clone(), config.query.clone(), &mut registry)
        .await
        .context("cannot start the query engine")?;
    let stop_spans = CancellationToken::new();
    let spans = spans.map(|queue| {
        queue.start(
            router.clone(),
            vec![
                ("oxeye.role", format!("{role:?}").to_lowercase()),
                ("service.instance.id", config.http_listen.to_string()),
            ],
            &mut registry,
            stop_spans.clone(),
        )
    });
    let tenants = tenants::Tenants::open(&config, &mut registry).await?;
    let collector = match role {
        Role::All => Some(
            oxeye_collector::start_with_tenants(
                &config.collector,
                router,
                tenants.sinks(),
                &mut registry,
            )
            .await?,
        ),
        Role::Query | Role::Store | Role::Collector => None,
    };
    let stop_cluster = CancellationToken::new();
    let mut leases = None;
    let flight = match (role, &metastore) {
        (Role::Store, Some(meta)) => {
            let service = oxeye_flight::IngestFlightService::new(store.shard_sinks())
                .with_snapshots(
                    store.clone(),
                    Some(engine.snapshot_filters()),
                    engine.partial_aggregates(),
                );
            let (addr, task) = oxeye_flight::serve(
                config.flight_listen,
                service,
                config.tls.server(),
                stop_cluster.clone(),
            )
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for Arrow Flight; is the port in use?",
                    config.flight_listen
                )
            })?;
            let node_id = format!("store-{}", config.flight_advertise);
            cluster::heartbeat(
                meta.clone(),
                oxeye_metastore::Node {
                    id: node_id.clone(),
                    role: "store".into(),
                    flight_addr: config.flight_advertise.clone(),
                    shard_ids: config.store.shard_ids(),
                },
                stop_cluster.clone(),
            );
            leases = Some(
                cluster::lead_shards(meta.clone(), store.clone(), node_id, stop_cluster.clone())
                    .await,
            );
            tracing::info!(flight = %addr, advertised = config.flight_advertise, "store node");
            Some(task)
        }
        (Role::Query, Some(meta)) => {
            // Queries read each store node's shards from its own snapshot (committed segments
            // and unflushed rows), so rows show up before they are flushed.
            // Rows store nodes set aside for a query are kept a little longer than it may run.
            let remote = oxeye_flight::FlightRemoteShards::new(
                config.query.memory_limit_bytes,
                config.tls.client().clone(),
                config.query.timeout + std::time::Duration::from_secs(30),
            );
            store.set_remote_shards(remote.clone());
            cluster::follow_store_nodes(meta.clone(), remote, stop_cluster.clone());
            None
        }
        _ => None,
    };
    let stop_alerts = CancellationToken::new();
    let alert_dir = config.data_dir.join("alerts");
    // Alone, alerting keeps its data in the data directory and leads by a file lock; with a
    // metastore, every node shares rules and state there and one holds the evaluator lease.
    let (alert_store, leadership): (
        Arc<dyn oxeye_alert::storage::AlertStore>,
        Arc<dyn oxeye_alert::lease::Leadership>,
    ) = match &metastore {
        None => (
            Arc::new(oxeye_alert::storage::LocalStore::open(&alert_dir)?),
            Arc::new(oxeye_alert::lease::FileLease::new(
                alert_dir.join("leader.lock"),
            )),
        ),
        Some(meta) => (
            Arc::new(oxeye_alert::storage_pg::PgAlertStore::new(
                meta.clone(),
                config.alert.history,
            )),
            Arc::new(oxeye_alert::lease::MetastoreLease::start(
                meta.clone(),
                "alert-evaluator",
                format!("{}/{}", config.http_listen, std::process::id()),
                std::time::Duration::from_secs(10),
                stop_alerts.clone(),
            )),
        ),
    };
    let alerts = oxeye_alert::AlertService::open(
        engine.clone(),
        alert_store,
        leadership,
        config.alert.clone(),
        &mut registry,
        stop_alerts.clone(),
    )
    .await
    .context("cannot start alerting")?;
    let evaluator = alerts.start();

    let ready = Arc::new(AtomicBool::new(false));
    let registry = Arc::new(parking_lot::RwLock::new(registry));
    let api = tenants::dispatch(
        tenants::api_router(engine.clone(), alerts.clone(), &registry, &ready),
        tenants.routers(&registry, &ready),
    )
    .merge(oxeye_auth::login_routes(
        config.auth.clone(),
        config.tls.enabled(),
    ));
    let stop_http = CancellationToken::new();
    let (http_addr, http_task) = serve_http(
        config.http_listen,
        api,
        &config.auth,
        &config.tls,
        stop_http.clone(),
    )
    .await?;
    let pg = oxeye_query::pg::start(
        oxeye_query::pg::Engines::new(engine.clone(), tenants.engines()),
        oxeye_query::pg::PgConfig {
            listen: config.pg_listen,
            user: config.pg_user.clone(),
            password: config.pg_password.clone(),
            auth: config.auth.clone(),
            tls: config
                .tls
                .server()
                .map(oxeye_tls::ServerTls::postgres_acceptor),
        },
    )
    .await
    .with_context(|| {
        format!(
            "cannot listen on {} for the PostgreSQL protocol; is the port in use?",
            config.pg_listen
        )
    })?;
    ready.store(true, Ordering::Relaxed);
    tracing::info!(
        postgres = %pg.addr,
        otlp_grpc = collector.as_ref().map(|c| c.grpc_addr.to_string()).unwrap_or_default(),
        otlp_http = collector.as_ref().map(|c| c.http_addr.to_string()).unwrap_or_default(),
        http = %http_addr,
        data_dir = %config.data_dir.display(),
        "oxeye is serving"
    );

    stop_signal().await;
    tracing::info!("stopping: draining requests and flushing acknowledged data");
    ready.store(false, Ordering::Relaxed);
    if let Some(collector) = collector {
        collector.shutdown().await;
    }
    stop_cluster.cancel();
    if let Some(flight) = flight {
        let _ = flight.await;
    }
    stop_alerts.cancel();
    let _ = evaluator.await;
    stop_http.cancel();
    let _ = http_task.await;
    pg.shutdown().await;
    // The last spans (of the shutdown itself) go in before the shards close.
    stop_spans.cancel();
    if let Some(task) = spans {
        let _ = task.await;
    }
    tenants.shutdown().await;
    if let Some(leases) = &leases {
        leases.stop().await;
    }
    store.shutdown().await;
    if let Some(leases) = leases {
        // After the last flush: the replicas take over at once.
        leases.release().await;
    }
    drop(engine);
    tracing::info!("oxeye stopped");
    Ok(())
}
