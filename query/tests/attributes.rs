//! Attribute lookups over both read paths: rows in memory (values stored as text) and rows
//! in segments (values read as a dictionary) answer the same, as text. Also how the size of a
//! read shapes the plan.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::time::Duration;

use arrow::array::{Array, AsArray, Int64Array};
use arrow::datatypes::DataType;
use common::ROUTES;
use oxeye_model::SignalBatch;
use oxeye_query::{QueryConfig, QueryEngine, QueryResult};
use oxeye_store::{Store, StoreConfig};
use prometheus_client::registry::Registry;

/// `n` spans from `first`, 1 µs apart, named GET and 500 ns long (see `common::numbered_spans`).
fn spans(first: u64, n: u64) -> SignalBatch {
    common::numbered_spans(first, n, 1_000, |_| ("GET", 500))
}

/// How many of spans 0..n carry `route`.
fn expected(route: &str, n: u64) -> i64 {
    common::spans_with_route(route, n) as i64
}

async fn engine(dir: &std::path::Path) -> (Store, QueryEngine) {
    engine_with(dir, QueryConfig::default()).await
}

async fn engine_with(dir: &std::path::Path, query: QueryConfig) -> (Store, QueryEngine) {
    let mut config = StoreConfig::new(dir);
    config.granule_rows = 64;
    config.row_group_rows = 256;
    config.flush_age = Duration::from_secs(3600);
    config.maintenance_interval = Duration::from_secs(3600);
    config.min_free_disk_bytes = 0;
    let mut registry = Registry::default();
    let store = Store::open_local(config, &mut registry).await.unwrap();
    let engine = QueryEngine::new(store.clone(), query, &mut registry)
        .await
        .unwrap();
    (store, engine)
}

fn counts(result: &QueryResult) -> Vec<(Option<String>, i64)> {
    let mut out = Vec::new();
    for batch in &result.batches {
        let routes = batch.column(0).as_string::<i32>();
        let n = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for row in 0..batch.num_rows() {
            out.push((
                (!routes.is_null(row)).then(|| routes.value(row).to_string()),
                n.value(row),
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_answer_text_from_memory_and_segments_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (store, engine) = engine(dir.path()).await;
    let sink = store.shard_sinks()[0].1.clone();
    // 900 spans flushed into a segment, 300 more left in memory.
    sink.ingest(vec![spans(0, 900)]).await.unwrap();
    store.flush().await.unwrap();
    sink.ingest(vec![spans(900, 300)]).await.unwrap();
    let total = 1200;

    let grouped = engine
        .sql("SELECT attributes['http.route'] AS v, count(*) AS n FROM spans GROUP BY 1")
        .await
        .unwrap();
    assert_eq!(grouped.schema.field(0).data_type(), &DataType::Utf8);
    let mut want: Vec<(Option<String>, i64)> = ROUTES
        .iter()
        .map(|r| (Some(r.to_string()), expected(r, total)))
        .collect();
    want.push((None, total.div_ceil(4) as i64));
    want.sort();
    assert_eq!(counts(&grouped), want);

    // Equality goes through the index and the row filter, on both read paths.
    for route in ROUTES {
        let filtered = engine
            .sql(&format!(
                "SELECT attributes['http.route'], count(*) FROM spans \
                 WHERE attributes['http.route'] = '{route}' GROUP BY 1"
            ))
            .await
            .unwrap();
        assert_eq!(
            counts(&filtered),
            vec![(Some(route.to_string()), expected(route, total))]
        );
    }

    // Whole maps still come out as JSON objects with plain text values.
    let maps = engine
        .sql("SELECT attributes FROM spans ORDER BY start_time LIMIT 2")
        .await
        .unwrap();
    let json = String::from_utf8(oxeye_query::format::to_json(&maps).unwrap()).unwrap();
    assert!(json.contains(r#"{"user.id":"user-0"}"#), "{json}");
    assert!(json.contains(r#""http.route":"/b""#), "{json}");
}

/// The physical plan of `sql`, as EXPLAIN prints it.
async fn physical_plan(engine: &QueryEngine, sql: &str) -> String {
    let explained = engine.sql(&format!("EXPLAIN {sql}")).await.unwrap();
    let mut text = String::new();
    for batch in &explained.batches {
        let kinds = batch.column(0).as_string::<i32>();
        let plans = batch.column(1).as_string::<i32>();
        for row in 0..batch.num_rows() {
            if kinds.value(row) == "physical_plan" {
                text.push_str(plans.value(row));
            }
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_reads_stay_on_one_thread_and_big_ones_spread() {
    let dir = tempfile::tempdir().unwrap();
    let config = QueryConfig {
        threads: 2,
        ..QueryConfig::default()
    };
    let (store, engine) = engine_with(dir.path(), config).await;
    let sink = store.shard_sinks()[0].1.clone();
    let sql = "SELECT name, count(*) FROM spans GROUP BY 1";

    // 1,200 rows, under one batch (8192): repartitioning would cost more than the work.
    sink.ingest(vec![spans(0, 900)]).await.unwrap();
    store.flush().await.unwrap();
    sink.ingest(vec![spans(900, 300)]).await.unwrap();
    let small = physical_plan(&engine, sql).await;
    assert!(!small.contains("RepartitionExec"), "{small}");
    let answer = engine.sql(sql).await.unwrap();
    let n = answer.batches[0]
        .column(1)
        .as_primitive::<arrow::datatypes::Int64Type>();
    assert_eq!(n.value(0), 1200);

    // 21,200 rows: the read is spread over both threads.
    sink.ingest(vec![spans(1200, 20_000)]).await.unwrap();
    store.flush().await.unwrap();
    let big = physical_plan(&engine, sql).await;
    assert!(big.contains("RepartitionExec"), "{big}");
    let answer = engine.sql(sql).await.unwrap();
    let total: i64 = answer
        .batches
        .iter()
        .map(|b| {
            let n = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
            (0..b.num_rows()).map(|i| n.value(i)).sum::<i64>()
        })
        .sum();
    assert_eq!(total, 21_200);
}
