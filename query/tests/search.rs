//! Full-text search over log segments indexed line by line, over unflushed lines and over both:
//! `search(body, ...)` finds exactly the lines `TextQuery::matches` accepts, whatever pages and
//! row groups they sit in, and a count of them reads no page of a segment when the index answers
//! the search exactly (words, prefixes, AND, OR), while phrases and negations, which the index
//! only narrows, are still tested line by line.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use arrow::array::Array;
use oxeye_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use oxeye_model::otlp::common::v1::{AnyValue, KeyValue, any_value::Value};
use oxeye_model::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use oxeye_model::otlp::resource::v1::Resource;
use oxeye_model::{Signal, SignalBatch};
use oxeye_query::{QueryConfig, QueryEngine};
use oxeye_store::{Store, StoreConfig, TextQuery};
use prometheus_client::registry::Registry;

const WORDS: [&str; 6] = ["alpha", "beta", "gamma", "delta", "alphabet", "omega"];

/// Line i: the words whose bit is set in i's pattern, in an order that varies with i; every
/// 13th line is empty and every 17th has no body at all.
fn body(i: u64) -> Option<String> {
    if i.is_multiple_of(17) {
        return None;
    }
    if i.is_multiple_of(13) {
        return Some(String::new());
    }
    let pattern = (i * 7919) % 64;
    let mut words: Vec<&str> = (0..WORDS.len())
        .filter(|b| pattern & (1 << b) != 0)
        .map(|b| WORDS[b])
        .collect();
    if !words.is_empty() {
        let turn = (i % 3) as usize % words.len();
        words.rotate_left(turn);
    }
    Some(format!("{} (line {i})", words.join(" ")))
}

fn logs(first: u64, n: u64) -> SignalBatch {
    let records = (first..first + n)
        .map(|i| LogRecord {
            time_unix_nano: 1_700_000_000_000_000_000 + i * 1_000_000,
            body: body(i).map(|b| AnyValue {
                value: Some(Value::StringValue(b)),
            }),
            ..Default::default()
        })
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue("api".into())),
                    }),
                    key_strindex: 0,
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    oxeye_model::logs::logs_from_otlp(&request)
        .unwrap()
        .batches
        .remove(0)
}

fn counted_unread(registry: &Registry) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("oxeye_store_scan_rows_counted_unread_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_find_exactly_the_matching_lines_and_counts_come_from_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.flush_age = Duration::from_secs(3600);
    config.maintenance_interval = Duration::from_secs(3600);
    config.min_free_disk_bytes = 0;
    // Small pages and row groups, so matches spread over many of both.
    config.granule_rows = 64;
    config.row_group_rows = 512;
    let mut registry = Registry::default();
    let store = Store::open_local(config, &mut registry).await.unwrap();
    let engine = QueryEngine::new(store.clone(), QueryConfig::default(), &mut registry)
        .await
        .unwrap();
    let sink = store.shard_sinks()[0].1.clone();
    // Two segments, then unflushed lines.
    sink.ingest(vec![logs(0, 2000)]).await.unwrap();
    store.flush().await.unwrap();
    sink.ingest(vec![logs(2000, 1500)]).await.unwrap();
    store.flush().await.unwrap();
    sink.ingest(vec![logs(3500, 700)]).await.unwrap();
    assert_eq!(store.segments(Signal::Logs).len(), 2);
    let bodies: Vec<Option<String>> = (0..4200).map(body).collect();

    for (query, index_answers) in [
        ("alpha", true),
        ("alpha AND beta", true),
        ("gamma delta", true),
        ("beta OR omega", true),
        ("alpha*", true),
        ("alphabet AND (gamma OR delta)", true),
        ("\"beta gamma\"", false),
        ("alpha -beta", false),
        ("line", true),
        ("nothing", true),
    ] {
        let parsed = TextQuery::parse(query).unwrap();
        let mut want: Vec<String> = bodies
            .iter()
            .flatten()
            .filter(|b| parsed.matches(b))
            .cloned()
            .collect();
        want.sort();
        let got = engine
            .sql(&format!(
                "SELECT body FROM logs WHERE search(body, '{query}') ORDER BY body"
            ))
            .await
            .unwrap();
        let got: Vec<String> = got
            .batches
            .iter()
            .flat_map(|b| {
                let col = arrow::array::AsArray::as_string::<i32>(b.column(0)).clone();
                (0..col.len())
                    .map(move |i| col.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, want, "{query}");

        let before = counted_unread(&registry);
        let counted = engine
            .sql(&format!(
                "SELECT count(*) AS n FROM logs WHERE search(body, '{query}')"
            ))
            .await
            .unwrap();
        let n = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
            counted.batches[0].column(0),
        )
        .value(0);
        assert_eq!(n as usize, want.len(), "count of {query}");
        let unread = counted_unread(&registry) - before;
        let in_segments = want
            .iter()
            .filter(|b| {
                let line: u64 = b
                    .rsplit("line ")
                    .next()
                    .unwrap()
                    .trim_end_matches(')')
                    .parse()
                    .unwrap();
                line < 3500
            })
            .count() as u64;
        if index_answers {
            assert_eq!(unread, in_segments, "{query}: segment lines counted unread");
        } else {
            assert_eq!(unread, 0, "{query}: the index only narrows it");
        }
    }
    store.shutdown().await;
}
