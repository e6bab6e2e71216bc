//! Running SQL: one shared DataFusion session over the store's tables, read-only, with a
//! timeout, a memory pool, a cap on concurrent queries and on result rows, executed on a
//! runtime of its own so that queries never starve ingestion of threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use oxeye_model::Signal;
use oxeye_store::Store;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::QueryError;
use crate::metrics::QueryMetrics;
use crate::table::OxeyeTable;
use crate::udf::SearchUdf;

#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Longest a query may run.
    pub timeout: Duration,
    /// Memory all running queries may use together (sorts and joins spill beyond it).
    pub memory_limit_bytes: usize,
    /// Rows a query returns at most; the rest is cut and the result marked truncated.
    pub max_result_rows: usize,
    /// Queries that may run at once; others wait (within their timeout).
    pub max_concurrent_queries: usize,
    /// Threads of the query runtime.
    pub threads: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        QueryConfig {
            timeout: Duration::from_secs(30),
            memory_limit_bytes: 2 * 1024 * 1024 * 1024,
            max_result_rows: 100_000,
            max_concurrent_queries: 16,
            threads: cores,
        }
    }
}

/// The result of a query.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// Rows were cut at `max_result_rows`.
    pub truncated: bool,
    pub elapsed: Duration,
}

/// A runtime of the query engine's own (dropped without blocking, even from async code).
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Views created at start-up, in order.
const VIEWS: &[(&str, &str)] = &[(
    "traces",
    "CREATE VIEW traces AS
     SELECT
       trace_id,
       first_value(service_name ORDER BY parent_span_id IS NOT NULL, start_time) AS root_service,
       first_value(name ORDER BY parent_span_id IS NOT NULL, start_time) AS root_name,
       min(start_time) AS start_time,
       max(end_time) AS end_time,
       CAST(max(end_time) AS BIGINT) - CAST(min(start_time) AS BIGINT) AS duration_ns,
       count(*) AS span_count,
       count(*) FILTER (WHERE status_code = 'ERROR') AS error_count,
       count(DISTINCT service_name) AS service_count
     FROM spans
     GROUP BY trace_id",
)];

#[derive(Clone)]
pub struct QueryEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    ctx: SessionContext,
    store: Store,
    config: QueryConfig,
    runtime: QueryRuntime,
    slots: Semaphore,
    metrics: QueryMetrics,
}

impl QueryEngine {
    pub async fn new(
        store: Store,
        config: QueryConfig,
        registry: &mut Registry,
    ) -> Result<QueryEngine, QueryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("oxeye-query")
            .enable_all()
            .build()
            .map_err(|e| QueryError::Internal(format!("cannot start the query runtime: {e}")))?;
        let rt_env = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(config.memory_limit_bytes)))
            .build_arc()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        // oxeye provides its own information_schema (PostgreSQL type names), see pg::catalog.
        let mut session_config = SessionConfig::new()
            .with_default_catalog_and_schema(crate::pg::catalog::DATABASE, "public")
            .with_information_schema(false)
            .with_target_partitions(config.threads.max(1))
            .with_batch_size(8192);
        // Scans report an upper bound of the rows they read (exact counts would need the
        // row filters run): reads smaller than a batch then stay on one thread.
        session_config
            .options_mut()
            .execution
            .use_row_number_estimates_to_optimize_partitioning = true;
        // Partial aggregates move to store nodes before the other rules run (see `partial`).
        let functions = Arc::new(std::sync::OnceLock::new());
        let mut physical_rules: Vec<
            Arc<dyn datafusion::physical_optimizer::PhysicalOptimizerRule + Send + Sync>,
        > = vec![Arc::new(crate::partial::PushPartialAggregates::new(
            functions.clone(),
        ))];
        physical_rules
            .extend(datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules);
        let state = SessionStateBuilder::new()
            .with_config(session_config)
            .with_runtime_env(rt_env)
            .with_default_features()
            .with_physical_optimizer_rules(physical_rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        for signal in Signal::ALL {
            ctx.register_table(
                signal.table_name(),
                Arc::new(OxeyeTable::new(store.clone(), signal)),
            )
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        }
        ctx.register_udf(SearchUdf::udf());
        ctx.add_analyzer_rule(crate::attributes::AttributeLookupsAsText::rule());
        for (name, ddl) in VIEWS {
            ctx.sql(ddl)
                .await
                .map_err(|e| QueryError::Internal(format!("cannot create view {name}: {e}")))?;
        }
        crate::system::register(&ctx, &store)
            .map_err(|e| QueryError::Internal(format!("cannot create system tables: {e}")))?;
        crate::pg::catalog::register(&ctx)
            .await
            .map_err(|e| QueryError::Internal(format!("cannot create pg_catalog: {e}")))?;
        crate::pg::catalog::register_information_schema(&ctx)
            .await
            .map_err(|e| QueryError::Internal(format!("cannot create information_schema: {e}")))?;
        // Every function is registered now: decoded plans may call any of them.
        let _ = functions.set(ctx.task_ctx());
        let metrics = QueryMetrics::register(registry);
        Ok(QueryEngine {
            inner: Arc::new(EngineInner {
                ctx,
                store,
                slots: Semaphore::new(config.max_concurrent_queries.max(1)),
                config,
                runtime: QueryRuntime(Some(runtime)),
                metrics,
            }),
        })
    }

    pub fn context(&self) -> &SessionContext {
        &self.inner.ctx
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// What a store node needs to filter its snapshots by query nodes' row filters.
    pub fn snapshot_filters(&self) -> Arc<dyn oxeye_store::RowFilterCompiler> {
        Arc::new(crate::rowfilter::SnapshotFilters::new(
            self.inner.ctx.state(),
        ))
    }

    /// What a store node needs to run query nodes' partial aggregates over its rows.
    pub fn partial_aggregates(&self) -> Option<Arc<dyn oxeye_store::PartialAggregator>> {
        let runtime = self.inner.runtime.0.as_ref()?.handle().clone();
        Some(Arc::new(crate::partial::StoreNodePartials::new(
            self.inner.store.clone(),
            self.inner.ctx.clone(),
            runtime,
        )))
    }

    pub fn config(&self) -> &QueryConfig {
        &self.inner.config
    }

    /// Adds a table that another part of oxeye owns (alerting's `alert_events`, say) and lists
    /// it in `pg_catalog` and `information_schema`, so SQL clients see it like the others.
    pub async fn register_table(
        &self,
        name: &str,
        table: Arc<dyn datafusion::datasource::TableProvider>,
    ) -> Result<(), QueryError> {
        let ctx = &self.inner.ctx;
        ctx.register_table(name, table)
            .map_err(|e| QueryError::Internal(format!("cannot register table {name}: {e}")))?;
        crate::pg::catalog::register(ctx)
            .await
            .map_err(|e| QueryError::Internal(format!("cannot refresh pg_catalog: {e}")))?;
        crate::pg::catalog::register_information_schema(ctx)
            .await
            .map_err(|e| QueryError::Internal(format!("cannot refresh information_schema: {e}")))
    }

    /// Plans a read-only statement (placeholders `$1`... allowed) without running it.
    pub async fn plan(&self, sql: &str) -> Result<LogicalPlan, QueryError> {
        let limit = self.inner.config.memory_limit_bytes;
        let state = self.inner.ctx.state();
        let shown = show_as_query(sql);
        let sql = shown.as_deref().unwrap_or(sql);
        let plan = match state.create_logical_plan(sql).await {
            Ok(p) => p,
            Err(e) => return Err(QueryError::from_datafusion(e, limit).at_end_of(sql)),
        };
        read_only_options()
            .verify_plan(&plan)
            .map_err(|_| QueryError::ReadOnly(statement_kind(sql)))?;
        Ok(plan)
    }

    /// Runs a planned statement with the engine's limits.
    pub async fn run_plan(
        &self,
        plan: LogicalPlan,
        max_rows: usize,
    ) -> Result<QueryResult, QueryError> {
        let started = Instant::now();
        let max_rows = max_rows.min(self.inner.config.max_result_rows);
        let inner = self.inner.clone();
        let span = query_span(|| plan.display_indent().to_string());
        let result = self
            .spawn_limited(async move {
                let df =
                    inner.ctx.execute_logical_plan(plan).await.map_err(|e| {
                        QueryError::from_datafusion(e, inner.config.memory_limit_bytes)
                    })?;
                collect(&inner, df, max_rows, started).await
            })
            .instrument(span.clone())
            .await;
        record_outcome(&span, &result);
        self.inner.metrics.observe(&result, started.elapsed());
        result
    }

    /// Runs a read-only SQL query with the engine's limits.
    pub async fn sql(&self, sql: &str) -> Result<QueryResult, QueryError> {
        self.sql_limited(sql, self.inner.config.max_result_rows)
            .await
    }

    /// Runs a query with a smaller row cap (the APIs use this).
    pub async fn sql_limited(&self, sql: &str, max_rows: usize) -> Result<QueryResult, QueryError> {
        let started = Instant::now();
        let span = query_span(|| sql.to_string());
        let result = self
            .run(
                sql.to_string(),
                max_rows.min(self.inner.config.max_result_rows),
            )
            .instrument(span.clone())
            .await;
        record_outcome(&span, &result);
        self.inner.metrics.observe(&result, started.elapsed());
        if let Err(e) = &result {
            tracing::debug!(error = %e, sql, "query failed");
        }
        result.map_err(|e| e.at_end_of(sql))
    }

    async fn run(&self, sql: String, max_rows: usize) -> Result<QueryResult, QueryError> {
        let inner = self.inner.clone();
        self.spawn_limited(async move { execute(&inner, &sql, max_rows).await })
            .await
    }

    /// Runs query work on the query runtime, within a concurrency slot and the timeout.
    async fn spawn_limited<F>(&self, work: F) -> Result<QueryResult, QueryError>
    where
        F: std::future::Future<Output = Result<QueryResult, QueryError>> + Send + 'static,
    {
        let timeout = self.inner.config.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let _slot = tokio::time::timeout_at(deadline, self.inner.slots.acquire())
            .await
            .map_err(|_| QueryError::Busy)?
            .map_err(|_| QueryError::Busy)?;
        let Some(rt) = self.inner.runtime.0.as_ref() else {
            return Err(QueryError::Internal("the query runtime is gone".into()));
        };
        let task = rt.spawn(work.in_current_span());
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(QueryError::Internal(format!("query task failed: {e}"))),
            Err(_) => {
                abort.abort();
                Err(QueryError::Timeout(timeout))
            }
        }
    }
}

/// A span per query, for `--self-trace`: the statement (its first 1,000 characters), then the
/// rows returned or the error.
fn query_span(statement: impl FnOnce() -> String) -> tracing::Span {
    let span = tracing::info_span!(
        "sql.query",
        db.query.text = tracing::field::Empty,
        db.response.returned_rows = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    // Only when something records spans: formatting a plan is not free.
    if !span.is_disabled() {
        let text: String = statement().chars().take(1000).collect();
        span.record("db.query.text", text.as_str());
    }
    span
}

fn record_outcome(span: &tracing::Span, result: &Result<QueryResult, QueryError>) {
    match result {
        Ok(r) => span.record("db.response.returned_rows", r.rows as u64),
        Err(e) => span.record("error", e.to_string()),
    };
}

/// `SHOW TABLES` and `SHOW COLUMNS FROM t` as queries over information_schema.
fn show_as_query(sql: &str) -> Option<String> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let upper: Vec<String> = words
        .iter()
        .take(3)
        .map(|w| w.trim_end_matches(';').to_ascii_uppercase())
        .collect();
    match upper.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["SHOW", "TABLES", ..] => Some(
            "SELECT table_catalog, table_schema, table_name, table_type FROM information_schema.tables ORDER BY 2, 3".into(),
        ),
        ["SHOW", "COLUMNS", "FROM" | "IN"] => {
            let table = words.get(3)?.trim_end_matches(';').trim_matches('"').replace('\'', "''");
            Some(format!(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
                 WHERE table_name = '{table}' ORDER BY ordinal_position"
            ))
        }
        _ => None,
    }
}

fn read_only_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// The first keyword of a statement, for a clear read-only error.
fn statement_kind(sql: &str) -> String {
    sql.trim_start()
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("")
        .to_uppercase()
}

async fn execute(
    inner: &EngineInner,
    sql: &str,
    max_rows: usize,
) -> Result<QueryResult, QueryError> {
    let started = Instant::now();
    let limit = inner.config.memory_limit_bytes;
    let shown = show_as_query(sql);
    let sql = shown.as_deref().unwrap_or(sql);
    let df = match inner.ctx.sql_with_options(sql, read_only_options()).await {
        Ok(df) => df,
        Err(e) => {
            let msg = e.to_string();
            if msg.contains("not supported")
                && (msg.contains("DDL") || msg.contains("DML") || msg.contains("Statement"))
            {
                return Err(QueryError::ReadOnly(statement_kind(sql)));
            }
            return Err(QueryError::from_datafusion(e, limit));
        }
    };
    collect(inner, df, max_rows, started).await
}

/// Runs a DataFrame, keeping at most `max_rows` rows; `started` is when planning began, so
/// the result's `elapsed` covers parsing, planning and execution.
async fn collect(
    inner: &EngineInner,
    df: datafusion::dataframe::DataFrame,
    max_rows: usize,
    started: Instant,
) -> Result<QueryResult, QueryError> {
    let limit = inner.config.memory_limit_bytes;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df
        .execute_stream()
        .await
        .map_err(|e| QueryError::from_datafusion(e, limit))?;
    let mut batches = Vec::new();
    let mut rows = 0usize;
    let mut truncated = false;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| QueryError::from_datafusion(e, limit))?;
        if rows + batch.num_rows() > max_rows {
            let keep = max_rows - rows;
            if keep > 0 {
                batches.push(batch.slice(0, keep));
            }
            rows = max_rows;
            truncated = true;
            break;
        }
        rows += batch.num_rows();
        batches.push(batch);
    }
    let schema = batches.first().map(|b| b.schema()).unwrap_or(schema);
    Ok(QueryResult {
        schema,
        batches,
        rows,
        truncated,
        elapsed: started.elapsed(),
    })
}
