//! A query node reading a store node's unflushed rows over Arrow Flight: the store node sends
//! only the rows the query's filters keep, only the columns it reads, and no more rows than an
//! unfiltered `LIMIT` needs, and every answer is the one the store node gives itself.

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

async fn node(dir: &std::path::Path) -> (Store, QueryEngine) {
    let mut config = StoreConfig::new(dir);
    config.flush_age = Duration::from_secs(3600);
    config.maintenance_interval = Duration::from_secs(3600);
    config.min_free_disk_bytes = 0;
    let mut registry = Registry::default();
    let store = Store::open_local(config, &mut registry).await.unwrap();
    let engine = QueryEngine::new(store.clone(), QueryConfig::default(), &mut registry)
        .await
        .unwrap();
    (store, engine)
}

/// The `snapshot_rows` EXPLAIN shows for `sql`'s scan: unflushed rows that came from store
/// nodes (0 when none did).
async fn snapshot_rows(engine: &QueryEngine, sql: &str) -> u64 {
    let explained = engine.sql(&format!("EXPLAIN {sql}")).await.unwrap();
    let mut plan = String::new();
    for batch in &explained.batches {
        let plans = batch.column(1).as_string::<i32>();
        for row in 0..batch.num_rows() {
            plan.push_str(plans.value(row));
        }
    }
    plan.split("snapshot_rows=")
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
    let node_dir = tempfile::tempdir().unwrap();
    let (node_store, node_engine) = node(node_dir.path()).await;
    let sink = node_store.shard_sinks()[0].1.clone();
    sink.ingest(vec![spans(SPANS)]).await.unwrap();
    let service = oxeye_flight::IngestFlightService::new(node_store.shard_sinks())
        .with_snapshots(node_store.clone(), Some(node_engine.snapshot_filters()));
    let stop = CancellationToken::new();
    let (addr, server) =
        oxeye_flight::serve("127.0.0.1:0".parse().unwrap(), service, None, stop.clone())
            .await
            .unwrap();

    // A query node with nothing of its own: every row comes from the store node's snapshot.
    let query_dir = tempfile::tempdir().unwrap();
    let (query_store, query_engine) = node(query_dir.path()).await;
    let remote = oxeye_flight::FlightRemoteShards::new(1 << 30, oxeye_tls::ClientTls::default());
    remote.set_nodes(&[format!("http://{addr}")]);
    query_store.set_remote_shards(remote);

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
            answer(&query_engine, sql).await,
            answer(&node_engine, sql).await,
            "{sql}"
        );
        let got = snapshot_rows(&query_engine, sql).await;
        match moved {
            Some(want) => assert_eq!(got, *want, "rows sent for {sql}"),
            None => assert!(got > 0 && got <= 5, "rows sent for {sql}: {got}"),
        }
    }
    stop.cancel();
    server.await.unwrap();
    node_store.shutdown().await;
    query_store.shutdown().await;
}
