//! Tenants in `oxeye serve`.
//!
//! Each tenant the token file names has its own store (under `<data-dir>/tenants/<name>`:
//! WAL, segments, index, catalog), query engine and alerting. Whatever a tenant's token asks
//! for is answered by that tenant's parts, so isolation does not rest on a filter someone
//! could forget: the tables a tenant's SQL scans are its own store's and no other. OTLP goes to
//! the token's tenant's pipeline (the collector's `Pipelines`), HTTP API and UI requests to its
//! router ([`dispatch`]), PostgreSQL connections to its engine (`pg::Engines`). Tokens without a
//! tenant, and everything when tokens are off, belong to the default tenant: the data directory
//! itself, as before tenants existed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use oxeye_collector::routing::{ShardRouter, ShardTarget};
use oxeye_model::ingest::Ingest;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::ServeConfig;

/// One tenant's store, engine and alerting.
pub struct Tenant {
    pub store: oxeye_store::Store,
    pub engine: oxeye_query::QueryEngine,
    pub alerts: oxeye_alert::AlertService,
    pub sink: Arc<dyn Ingest>,
    evaluator: tokio::task::JoinHandle<()>,
}

/// Every tenant besides the default one.
pub struct Tenants {
    pub by_name: BTreeMap<String, Tenant>,
    stop_alerts: CancellationToken,
}

impl Tenants {
    /// Opens the tenants the tokens name; their metrics carry a `tenant` label.
    pub async fn open(config: &ServeConfig, registry: &mut Registry) -> anyhow::Result<Tenants> {
        let stop_alerts = CancellationToken::new();
        let mut by_name = BTreeMap::new();
        for name in config.auth.tenants() {
            let dir = config.data_dir.join("tenants").join(&name);
            let registry = registry
                .sub_registry_with_label((Cow::Borrowed("tenant"), Cow::Owned(name.clone())));
            let mut store_config = config.store.clone();
            store_config.data_dir = dir.clone();
            let store = oxeye_store::Store::open(
                store_config,
                oxeye_store::Storage::local(&dir.join("objects"))
                    .context("cannot set up a tenant's object store")?,
                Arc::new(oxeye_store::FileMetastore::new(&dir)),
                registry,
            )
            .await
            .with_context(|| {
                format!(
                    "cannot open the store of tenant `{name}` in {}",
                    dir.display()
                )
            })?;
            let sink = store_sink(&store);
            let engine =
                oxeye_query::QueryEngine::new(store.clone(), config.query.clone(), registry)
                    .await
                    .with_context(|| format!("cannot start the query engine of tenant `{name}`"))?;
            let alert_dir = dir.join("alerts");
            let alerts = oxeye_alert::AlertService::open(
                engine.clone(),
                Arc::new(oxeye_alert::storage::LocalStore::open(&alert_dir)?),
                Arc::new(oxeye_alert::lease::FileLease::new(
                    alert_dir.join("leader.lock"),
                )),
                oxeye_alert::AlertConfig {
                    // The rules file is the default tenant's; tenants keep rules through the API.
                    rules_file: None,
                    ..config.alert.clone()
                },
                registry,
                stop_alerts.clone(),
            )
            .await
            .with_context(|| format!("cannot start alerting of tenant `{name}`"))?;
            let evaluator = alerts.start();
            tracing::info!(tenant = name, dir = %dir.display(), "tenant open");
            by_name.insert(
                name,
                Tenant {
                    store,
                    engine,
                    alerts,
                    sink,
                    evaluator,
                },
            );
        }
        Ok(Tenants {
            by_name,
            stop_alerts,
        })
    }

    pub fn sinks(&self) -> BTreeMap<String, Arc<dyn Ingest>> {
        self.by_name
            .iter()
            .map(|(name, t)| (name.clone(), t.sink.clone()))
            .collect()
    }

    pub fn engines(&self) -> BTreeMap<String, oxeye_query::QueryEngine> {
        self.by_name
            .iter()
            .map(|(name, t)| (name.clone(), t.engine.clone()))
            .collect()
    }

    /// The HTTP API and UI of each tenant.
    pub fn routers(
        &self,
        registry: &Arc<parking_lot::RwLock<Registry>>,
        ready: &Arc<AtomicBool>,
    ) -> BTreeMap<String, Router> {
        self.by_name
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    api_router(t.engine.clone(), t.alerts.clone(), registry, ready),
                )
            })
            .collect()
    }

    /// Stops alert evaluation, then closes the stores (flushing what they hold).
    pub async fn shutdown(self) {
        self.stop_alerts.cancel();
        for (_, t) in self.by_name {
            let _ = t.evaluator.await;
            t.store.shutdown().await;
        }
    }
}

/// Writes into `store`'s shards, each row to the shard its key picks.
pub fn store_sink(store: &oxeye_store::Store) -> Arc<dyn Ingest> {
    Arc::new(ShardRouter::new(
        store
            .shard_sinks()
            .into_iter()
            .map(|(id, sink)| ShardTarget { id, sink })
            .collect(),
    ))
}

/// The HTTP API, alerting API and UI over one engine.
pub fn api_router(
    engine: oxeye_query::QueryEngine,
    alerts: oxeye_alert::AlertService,
    registry: &Arc<parking_lot::RwLock<Registry>>,
    ready: &Arc<AtomicBool>,
) -> Router {
    oxeye_ui::server::router(
        oxeye_query::http::router(oxeye_query::http::ApiState {
            engine,
            registry: registry.clone(),
            ready: ready.clone(),
        })
        .merge(oxeye_alert::http::router(alerts)),
    )
    .layer(axum::middleware::from_fn(crate::trace_request))
}

#[derive(Clone)]
struct Routers {
    default: Router,
    tenants: Arc<BTreeMap<String, Router>>,
}

/// Sends each request to the router of its token's tenant (the auth guard in front put the
/// token's holder in the request); requests without a token, to `default`.
pub fn dispatch(default: Router, tenants: BTreeMap<String, Router>) -> Router {
    if tenants.is_empty() {
        return default;
    }
    Router::new().fallback(to_tenant).with_state(Routers {
        default,
        tenants: Arc::new(tenants),
    })
}

async fn to_tenant(State(routers): State<Routers>, req: Request) -> Response {
    let tenant = req
        .extensions()
        .get::<oxeye_auth::Principal>()
        .and_then(|p| p.tenant.clone());
    if tenant.is_some() && req.uri().path() == "/metrics" {
        // The process's figures cover every tenant: they are the operator's.
        return (
            axum::http::StatusCode::FORBIDDEN,
            "/metrics covers every tenant; read it with a token that has no tenant",
        )
            .into_response();
    }
    let router = match tenant.as_deref() {
        None => routers.default.clone(),
        Some(name) => match routers.tenants.get(name) {
            Some(r) => r.clone(),
            None => {
                return (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    format!("tenant `{name}` has no store on this node; restart oxeye after adding tenants"),
                )
                    .into_response();
            }
        },
    };
    match router.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
