//! A query node reading a store node's unflushed rows over Arrow Flight: the store node sends
//! only the rows the query's filters keep, only the columns it reads, and no more rows than an
//! unfiltered `LIMIT` needs; with more rows than travel at once, it sets them aside and sends
//! them when the scan runs, or runs the partial stage of an aggregate over them and sends the
//! states; and every answer is the one the store node gives itself.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::time::Duration;

use arrow::array::AsArray;
use oxeye_model::SignalBatch;
use oxeye_query::{QueryConfig, QueryEngine};
use oxeye_store::{Store, StoreConfig};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

const SPANS: u64 = 1200;

/// Span i: 1 ms after span i-1, named GET (even) or POST (odd), (i % 100) µs long; traces and
/// routes as `common::numbered_spans` makes them.
fn spans(n: u64) -> SignalBatch {
    common::numbered_spans(0, n, 1_000_000, |i| {
        (if i % 2 == 0 { "GET" } else { "POST" }, (i % 100) * 1_000)
    })
}

async fn node(dir: &std::path::Path) -> (Store, QueryEngine, Registry) {
    let mut config = StoreConfig::new(dir);
    config.flush_age = Duration::from_secs(3600);
    config.maintenance_interval = Duration::from_secs(3600);
    config.min_free_disk_bytes = 0;
    let mut registry = Registry::default();
    let store = Store::open_local(config, &mut registry).await.unwrap();
    let engine = QueryEngine::new(store.clone(), QueryConfig::default(), &mut registry)
        .await
        .unwrap();
    (store, engine, registry)
}

/// A store node holding `SPANS` unflushed spans behind Flight, and a query node with nothing
/// of its own that reads it, letting at most `inline_rows` unflushed rows travel with a
/// snapshot.
struct Cluster {
    node_store: Store,
    node_engine: QueryEngine,
    node_registry: Registry,
    query_store: Store,
    query_engine: QueryEngine,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Cluster {
    async fn start(inline_rows: usize) -> Cluster {
        let node_dir = tempfile::tempdir().unwrap();
        let (node_store, node_engine, node_registry) = node(node_dir.path()).await;
        let sink = node_store.shard_sinks()[0].1.clone();
        sink.ingest(vec![spans(SPANS)]).await.unwrap();
        let service = oxeye_flight::IngestFlightService::new(node_store.shard_sinks())
            .with_snapshots(
                node_store.clone(),
                Some(node_engine.snapshot_filters()),
                node_engine.partial_aggregates(),
            );
        let stop = CancellationToken::new();
        let (addr, server) =
            oxeye_flight::serve("127.0.0.1:0".parse().unwrap(), service, None, stop.clone())
                .await
                .unwrap();
        let query_dir = tempfile::tempdir().unwrap();
        let (query_store, query_engine, _) = node(query_dir.path()).await;
        let remote = oxeye_flight::FlightRemoteShards::with_inline_rows(
            1 << 30,
            oxeye_tls::ClientTls::default(),
            Duration::from_secs(60),
            inline_rows,
        );
        remote.set_nodes(&[format!("http://{addr}")]);
        query_store.set_remote_shards(remote);
        Cluster {
            node_store,
            node_engine,
            node_registry,
            query_store,
            query_engine,
            stop,
            server,
            _dirs: (node_dir, query_dir),
        }
    }

    /// A counter of the store node's (`oxeye_store_<name>_total`).
    fn node_counter(&self, name: &str) -> u64 {
        self.node_metric(&format!("{name}_total"))
    }

    /// A figure of the store node's (`oxeye_store_<name>`).
    fn node_metric(&self, name: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.node_registry).unwrap();
        let metric = format!("oxeye_store_{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&metric))
            .unwrap_or_else(|| panic!("no {metric} in {text}"))
            .trim()
            .parse()
            .unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.server.await.unwrap();
        self.node_store.shutdown().await;
        self.query_store.shutdown().await;
    }
}

/// `sql`'s plan as EXPLAIN shows it.
async fn explain(engine: &QueryEngine, sql: &str) -> String {
    let explained = engine.sql(&format!("EXPLAIN {sql}")).await.unwrap();
    let mut plan = String::new();
    for batch in &explained.batches {
        let plans = batch.column(1).as_string::<i32>();
        for row in 0..batch.num_rows() {
            plan.push_str(plans.value(row));
            plan.push('\n');
        }
    }
    plan
}

/// The `snapshot_rows` EXPLAIN shows for `sql`'s scan: unflushed rows that came from store
/// nodes (0 when none did).
async fn snapshot_rows(engine: &QueryEngine, sql: &str) -> u64 {
    explain(engine, sql)
        .await
        .split("snapshot_rows=")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap()
        })
        .unwrap_or(0)
}

/// The columns and rows of `sql`'s answer, as the HTTP API gives them.
async fn answer(engine: &QueryEngine, sql: &str) -> serde_json::Value {
    let result = engine.sql(sql).await.unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&oxeye_query::format::to_json(&result).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("elapsed_ms");
    json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_nodes_send_only_what_a_query_reads() {
    // Every unflushed row travels with the snapshot.
    let cluster = Cluster::start(usize::MAX).await;
    let (node_engine, query_engine) = (&cluster.node_engine, &cluster.query_engine);

    let routed_a = common::spans_with_route("/a", SPANS) as u64;
    let trace = hex::encode(8u64.to_be_bytes().repeat(2));
    // (query, unflushed rows that should travel)
    let cases: Vec<(String, Option<u64>)> = vec![
        // Everything travels when nothing narrows the read.
        ("SELECT name, count(*) AS n FROM spans GROUP BY 1 ORDER BY 1".into(), Some(SPANS)),
        // An attribute equality.
        (
            "SELECT count(*) AS n FROM spans WHERE attributes['http.route'] = '/a'".into(),
            Some(routed_a),
        ),
        // A comparison on a plain column; the span ids read are not among the filter's columns.
        (
            "SELECT span_id FROM spans WHERE duration_ns >= 90000 ORDER BY span_id".into(),
            Some(SPANS / 10),
        ),
        // Two conjuncts, one a function call.
        (
            "SELECT count(*) AS n FROM spans WHERE length(name) = 4 AND duration_ns < 10000"
                .into(),
            Some(SPANS / 20),
        ),
        // Text: equality, lists, patterns.
        ("SELECT count(*) AS n FROM spans WHERE name = 'POST'".into(), Some(SPANS / 2)),
        (
            "SELECT count(*) AS n FROM spans WHERE name IN ('POST', 'PUT')".into(),
            Some(SPANS / 2),
        ),
        (
            "SELECT count(*) AS n FROM spans WHERE name LIKE 'G%'".into(),
            Some(SPANS / 2),
        ),
        // Time: an hour-long range and a bound on a timestamp column.
        (
            "SELECT count(*) AS n FROM spans WHERE start_time >= TIMESTAMP '2023-11-14 22:13:20.600' \
             AND start_time < TIMESTAMP '2023-11-14 23:13:20'"
                .into(),
            Some(SPANS / 2),
        ),
        // A trace lookup.
        (
            format!("SELECT span_id FROM spans WHERE trace_id = '{trace}' ORDER BY span_id"),
            Some(4),
        ),
        // A LIMIT with no filter: at most that many rows travel.
        ("SELECT count(*) AS n FROM (SELECT span_id FROM spans LIMIT 5)".into(), None),
        // A filter on a computed column cannot travel; the answer is still whole.
        (
            "SELECT count(*) AS n FROM spans WHERE end_time - start_time > INTERVAL '50 microseconds'"
                .into(),
            Some(SPANS),
        ),
    ];
    for (sql, moved) in &cases {
        assert_eq!(
            answer(query_engine, sql).await,
            answer(node_engine, sql).await,
            "{sql}"
        );
        let got = snapshot_rows(query_engine, sql).await;
        match moved {
            Some(want) => assert_eq!(got, *want, "rows sent for {sql}"),
            None => assert!(got > 0 && got <= 5, "rows sent for {sql}: {got}"),
        }
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_snapshots_are_read_when_the_scan_runs_and_aggregates_run_on_the_store_node() {
    // More unflushed rows than travel with a snapshot: the store node sets them aside.
    let cluster = Cluster::start(100).await;
    let (node_engine, query_engine) = (&cluster.node_engine, &cluster.query_engine);
    let trace = hex::encode(8u64.to_be_bytes().repeat(2));

    // Aggregates: the store node runs the partial stage; only states travel.
    let aggregates = [
        "SELECT name, count(*) AS n FROM spans GROUP BY 1 ORDER BY 1".to_string(),
        "SELECT count(*) AS n, sum(duration_ns) AS d, min(start_time) AS s, max(name) AS m \
         FROM spans WHERE duration_ns >= 50000"
            .into(),
        "SELECT attributes['http.route'] AS route, count(DISTINCT attributes['user.id']) AS users, \
         avg(duration_ns) AS mean FROM spans GROUP BY 1 ORDER BY 1"
            .into(),
        // The traces view: first_value(... ORDER BY ...) merges partial states too.
        "SELECT trace_id, root_name, span_count, duration_ns FROM traces ORDER BY trace_id LIMIT 7"
            .into(),
        "SELECT count(*) AS n FROM spans WHERE attributes['http.route'] = '/b' AND name = 'GET'"
            .into(),
    ];
    for sql in &aggregates {
        let plan = explain(query_engine, sql).await;
        assert!(
            plan.contains("OxeyeRemotePartialAggregate") && plan.contains("pinned_rows=1200"),
            "{sql}:\n{plan}"
        );
        let (sent, aggregated) = (
            cluster.node_counter("snapshot_rows"),
            cluster.node_counter("partial_aggregate_rows"),
        );
        assert_eq!(
            answer(query_engine, sql).await,
            answer(node_engine, sql).await,
            "{sql}"
        );
        assert_eq!(
            cluster.node_counter("snapshot_rows"),
            sent,
            "no row travels for {sql}"
        );
        assert!(
            cluster.node_counter("partial_aggregate_rows") > aggregated,
            "{sql} was aggregated on the store node"
        );
    }

    // Reads of rows: the rows set aside travel when the scan runs, cut by its filters.
    let reads: [(String, u64); 3] = [
        (
            "SELECT span_id FROM spans WHERE duration_ns >= 90000 ORDER BY span_id".into(),
            SPANS / 10,
        ),
        (
            "SELECT count(*) AS n FROM (SELECT span_id FROM spans WHERE name = 'POST' \
             ORDER BY span_id LIMIT 10000)"
                .into(),
            SPANS / 2,
        ),
        // A trace lookup travels with the snapshot whatever its size.
        (
            format!("SELECT span_id FROM spans WHERE trace_id = '{trace}' ORDER BY span_id"),
            4,
        ),
    ];
    for (sql, moved) in &reads {
        let sent = cluster.node_counter("snapshot_rows");
        assert_eq!(
            answer(query_engine, sql).await,
            answer(node_engine, sql).await,
            "{sql}"
        );
        assert_eq!(
            cluster.node_counter("snapshot_rows") - sent,
            *moved,
            "rows sent for {sql}"
        );
    }

    // Rows set aside for a plan that never runs go back to the node when the plan is dropped.
    explain(query_engine, &aggregates[0]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.node_metric("snapshot_pins") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "rows set aside for an EXPLAIN were not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.stop().await;
}
