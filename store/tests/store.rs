//! The store end to end in one process: rows written through a shard sink come back, exactly
//! once, through every read path (memtable, segment, compacted segment, after a restart).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_model::otlp::common::v1::{AnyValue, KeyValue, any_value::Value};
use oxeye_model::otlp::resource::v1::Resource;
use oxeye_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
use oxeye_model::spans::{spans_from_otlp, spans_to_otlp};
use oxeye_model::{Signal, SignalBatch};
use oxeye_store::{IndexPredicate, Metastore, ScanRequest, SnapshotRequest, Store, StoreConfig};
use prometheus_client::registry::Registry;
use proptest::prelude::*;
use prost::Message;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        key_strindex: 0,
    }
}

/// Spans with ids derived from (trace, span) numbers, so every row is distinct.
fn spans(first: u64, end: u64, per_trace: u64, service: &str) -> SignalBatch {
    let spans = (first..end)
        .flat_map(|t| {
            (0..per_trace).map(move |s| {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&(t.wrapping_mul(0x9e37_79b9) + 1).to_be_bytes());
                trace_id[8..].copy_from_slice(&(t + 1).to_be_bytes());
                Span {
                    trace_id: trace_id.to_vec(),
                    span_id: (t * 1000 + s + 1).to_be_bytes().to_vec(),
                    name: format!("op-{s}"),
                    start_time_unix_nano: 1_700_000_000_000_000_000 + t * 1_000_000 + s,
                    end_time_unix_nano: 1_700_000_000_000_000_000 + t * 1_000_000 + s + 100,
                    attributes: vec![kv("k", &format!("v{}", t % 7))],
                    ..Default::default()
                }
            })
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    spans_from_otlp(&request).unwrap().batches.remove(0)
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.granule_rows = 64;
    c.row_group_rows = 256;
    c.flush_age = Duration::from_secs(3600);
    c.maintenance_interval = Duration::from_secs(3600);
    c.min_free_disk_bytes = 0;
    c.compaction_target_rows = 100_000;
    c
}

async fn open(dir: &std::path::Path) -> Store {
    Store::open_local(config(dir), &mut Registry::default())
        .await
        .unwrap()
}

async fn write(store: &Store, batch: SignalBatch) {
    let sinks = store.shard_sinks();
    sinks[0].1.ingest(vec![batch]).await.unwrap();
}

/// Every span in the store, as sorted protobuf bytes (one entry per row).
async fn all_spans(store: &Store, request: ScanRequest) -> Vec<Vec<u8>> {
    let batches: Vec<_> = store
        .scan(request, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let back = spans_to_otlp(&batches).unwrap();
    let mut out: Vec<Vec<u8>> = back
        .resource_spans
        .iter()
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter())
        .map(|s| s.encode_to_vec())
        .collect();
    out.sort();
    out
}

fn expected(batches: &[SignalBatch]) -> Vec<Vec<u8>> {
    let bs: Vec<_> = batches.iter().map(|b| b.batch.clone()).collect();
    let back = spans_to_otlp(&bs).unwrap();
    let mut out: Vec<Vec<u8>> = back
        .resource_spans
        .iter()
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter())
        .map(|s| s.encode_to_vec())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn rows_come_back_exactly_once_through_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let written = vec![
        spans(0, 30, 5, "a"),
        spans(30, 60, 5, "b"),
        spans(60, 100, 3, "c"),
    ];
    let want = expected(&written);
    let store = open(dir.path()).await;
    for b in &written {
        write(&store, b.clone()).await;
    }
    // Memtable only.
    assert!(store.all_segments().is_empty());
    assert_eq!(
        all_spans(&store, ScanRequest::all(Signal::Spans)).await,
        want
    );

    // Some rows flushed, some in memory.
    store.flush().await.unwrap();
    write(&store, spans(100, 110, 2, "d")).await;
    let mut want = want;
    want.extend(expected(&[spans(100, 110, 2, "d")]));
    want.sort();
    assert_eq!(
        all_spans(&store, ScanRequest::all(Signal::Spans)).await,
        want
    );

    // Flush again and compact the two segments into one.
    store.flush().await.unwrap();
    assert_eq!(store.segments(Signal::Spans).len(), 2);
    assert_eq!(store.compact().await.unwrap(), 1);
    let segs = store.segments(Signal::Spans);
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].level, 1);
    assert_eq!(
        all_spans(&store, ScanRequest::all(Signal::Spans)).await,
        want
    );

    // Clean restart.
    store.shutdown().await;
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(
        all_spans(&store, ScanRequest::all(Signal::Spans)).await,
        want
    );

    // Unflushed rows survive a restart through the WAL (the store is dropped without a flush).
    write(&store, spans(200, 205, 4, "e")).await;
    drop(store);
    let store = open(dir.path()).await;
    want.extend(expected(&[spans(200, 205, 4, "e")]));
    want.sort();
    assert_eq!(
        all_spans(&store, ScanRequest::all(Signal::Spans)).await,
        want
    );
    store.shutdown().await;
}

#[tokio::test]
async fn index_and_time_pruning_find_what_they_should() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    for i in 0..4u64 {
        write(
            &store,
            spans(i * 100, i * 100 + 100, 8, &format!("svc-{i}")),
        )
        .await;
        store.flush().await.unwrap();
    }
    // A trace by id, no time range: one segment, one or two granules.
    let target = spans(250, 251, 8, "svc-2");
    let id: [u8; 16] = {
        use arrow::array::{Array, FixedSizeBinaryArray};
        let ids = target.batch.column_by_name("trace_id").unwrap();
        let ids = ids.as_any().downcast_ref::<FixedSizeBinaryArray>().unwrap();
        assert!(!ids.is_empty());
        ids.value(0).try_into().unwrap()
    };
    let req = ScanRequest {
        index: Some(IndexPredicate::TraceId(id)),
        ..ScanRequest::all(Signal::Spans)
    };
    let plan = store.plan_scan(req.clone()).await.unwrap();
    assert_eq!(plan.stats.segments_total, 4);
    assert_eq!(plan.stats.segments_pruned_by_index, 3);
    assert!(plan.stats.granules_selected <= 2);
    let got = all_spans(&store, req).await;
    let want = expected(&[target]);
    assert!(
        want.iter().all(|w| got.contains(w)),
        "every span of the trace is read"
    );
    assert!(
        got.len() <= 128,
        "only the trace's granules are read, got {}",
        got.len()
    );

    // Time pruning: the last segment covers traces 300..400.
    let start = 1_700_000_000_000_000_000i64 + 300 * 1_000_000;
    let plan = store
        .plan_scan(ScanRequest {
            start: Some(start),
            ..ScanRequest::all(Signal::Spans)
        })
        .await
        .unwrap();
    assert_eq!(plan.stats.segments_pruned_by_time, 3);
    store.shutdown().await;
}

#[tokio::test]
async fn writers_and_readers_during_flush_and_compaction_see_consistent_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..20u64 {
                    let t = w * 10_000 + i * 10;
                    write(&store, spans(t, t + 10, 3, "w")).await;
                }
            })
        })
        .collect();
    let maintenance = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                store.flush().await.unwrap();
                store.compact().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Readers never see a row twice, whatever flushes and merges happen under them.
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                let rows = all_spans(&store, ScanRequest::all(Signal::Spans)).await;
                let mut dedup = rows.clone();
                dedup.dedup();
                assert_eq!(rows.len(), dedup.len(), "a row was read twice");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    maintenance.await.unwrap();
    reader.await.unwrap();
    store.flush().await.unwrap();
    store.compact().await.unwrap();
    let rows = all_spans(&store, ScanRequest::all(Signal::Spans)).await;
    assert_eq!(rows.len(), 4 * 20 * 10 * 3);
    store.shutdown().await;
}

#[tokio::test]
async fn retention_drops_expired_segments_and_garbage_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention = BTreeMap::from([(Signal::Spans, Duration::from_secs(3600))]);
    cfg.deletion_grace = Duration::ZERO;
    let store = Store::open_local(cfg, &mut Registry::default())
        .await
        .unwrap();
    // 2023 data: long expired.
    write(&store, spans(0, 10, 2, "old")).await;
    store.flush().await.unwrap();
    let seg = store.segments(Signal::Spans)[0].clone();
    let data_file = dir.path().join("objects").join(&seg.data_path);
    assert!(data_file.exists());
    drop(seg);
    assert_eq!(store.enforce_retention().await.unwrap(), 1);
    assert!(store.segments(Signal::Spans).is_empty());
    assert_eq!(store.collect_garbage(true).await.unwrap(), 1);
    assert!(!data_file.exists());
    store.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Random sequences of writes, flushes and compactions read back equal to what was written.
    #[test]
    fn random_writes_read_back_through_every_path(ops in proptest::collection::vec((1u64..40, 1u64..6, 0u8..4), 1..8)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path()).await;
            let mut written = Vec::new();
            let mut next = 0u64;
            for (traces, per, action) in ops {
                let b = spans(next, next + traces, per, "p");
                next += traces;
                write(&store, b.clone()).await;
                written.push(b);
                match action {
                    1 => store.flush().await.unwrap(),
                    2 => { store.flush().await.unwrap(); store.compact().await.unwrap(); }
                    _ => {}
                }
                prop_assert_eq!(all_spans(&store, ScanRequest::all(Signal::Spans)).await, expected(&written));
            }
            store.shutdown().await;
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn redelivered_batches_are_stored_once_across_flushes_and_restarts() {
    use oxeye_model::ingest::Marks;
    let marks = |producer: &str, positions: &[u64]| Marks {
        producer: producer.into(),
        positions: positions.to_vec(),
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, d) = (
        spans(0, 10, 5, "a"),
        spans(10, 20, 5, "b"),
        spans(20, 30, 5, "c"),
        spans(30, 40, 5, "d"),
    );
    let store = open(dir.path()).await;
    let sink = store.shard_sinks()[0].1.clone();
    sink.ingest_delivery(vec![a.clone(), b.clone()], marks("c1", &[1, 2]))
        .await
        .unwrap();
    // The acknowledgement was lost: the same delivery again, then one that is half new.
    sink.ingest_delivery(vec![a.clone(), b.clone()], marks("c1", &[1, 2]))
        .await
        .unwrap();
    sink.ingest_delivery(vec![b.clone(), c.clone()], marks("c1", &[2, 3]))
        .await
        .unwrap();
    let want = expected(&[a.clone(), b.clone(), c.clone()]);
    assert_eq!(
        all_spans(&store, ScanRequest::all(Signal::Spans)).await,
        want
    );

    // A crash before any flush: the WAL's records bring the positions back with the rows.
    drop(sink);
    drop(store);
    let store = open(dir.path()).await;
    let sink = store.shard_sinks()[0].1.clone();
    sink.ingest_delivery(vec![c.clone()], marks("c1", &[3]))
        .await
        .unwrap();
    assert_eq!(
        all_spans(&store, ScanRequest::all(Signal::Spans)).await,
        want
    );

    // After a flush the WAL records are gone; the catalog's checkpoint holds the positions.
    store.flush().await.unwrap();
    store.shutdown().await;
    drop(sink);
    drop(store);
    let store = open(dir.path()).await;
    let sink = store.shard_sinks()[0].1.clone();
    sink.ingest_delivery(vec![a.clone(), b.clone()], marks("c1", &[1, 2]))
        .await
        .unwrap();
    // Another producer's stream is its own; writes without marks are always written.
    sink.ingest_delivery(vec![d.clone()], marks("c2", &[1]))
        .await
        .unwrap();
    sink.ingest(vec![d.clone()]).await.unwrap();
    let mut want = want;
    want.extend(expected(&[d.clone(), d.clone()]));
    want.sort();
    assert_eq!(
        all_spans(&store, ScanRequest::all(Signal::Spans)).await,
        want
    );

    // A malformed mark is refused for good, not retried.
    let err = sink
        .ingest_delivery(vec![d.clone()], marks("not/valid", &[9]))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    let err = sink
        .ingest_delivery(vec![d.clone()], marks("c1", &[9, 10]))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    store.shutdown().await;
}

/// One catalog that two stores in this process share, as store nodes share PostgreSQL's.
struct SharedCatalog(std::sync::Arc<oxeye_store::FileMetastore>);

#[async_trait::async_trait]
impl Metastore for SharedCatalog {
    async fn load(&self) -> Result<oxeye_store::CatalogState, oxeye_store::StoreError> {
        self.0.load().await
    }
    async fn commit(
        &self,
        change: oxeye_store::catalog::CatalogChange,
    ) -> Result<oxeye_store::CatalogState, oxeye_store::StoreError> {
        self.0.commit(change).await
    }
    fn shared(&self) -> bool {
        true
    }
}

/// A replica of shard 0 with its own WAL, over the shared catalog and objects.
async fn replica(
    dir: &std::path::Path,
    name: &str,
    catalog: &std::sync::Arc<oxeye_store::FileMetastore>,
) -> Store {
    let mut c = config(&dir.join(name));
    c.replicated = true;
    c.catalog_refresh = Duration::from_millis(50);
    let storage = oxeye_store::Storage::local(&dir.join("objects")).unwrap();
    Store::open(
        c,
        storage,
        std::sync::Arc::new(SharedCatalog(catalog.clone())),
        &mut Registry::default(),
    )
    .await
    .unwrap()
}

fn has_wal_file(dir: &std::path::Path, seq: u64) -> bool {
    dir.join("wal/shard-0000")
        .join(oxeye_store::wal::file_name(seq))
        .exists()
}

#[tokio::test]
async fn replicas_take_over_a_shard_and_store_each_row_once() {
    use oxeye_model::ingest::Marks;
    let marks = |positions: &[u64]| Marks {
        producer: "c1".into(),
        positions: positions.to_vec(),
    };
    let dir = tempfile::tempdir().unwrap();
    let catalog = std::sync::Arc::new(oxeye_store::FileMetastore::new(&dir.path().join("meta")));
    let (a, b) = (
        replica(dir.path(), "a", &catalog).await,
        replica(dir.path(), "b", &catalog).await,
    );
    let batches: Vec<SignalBatch> = (0..6).map(|i| spans(i * 10, i * 10 + 10, 3, "r")).collect();
    let deliver = |store: &Store, from: usize, to: usize| {
        let sink = store.shard_sinks()[0].1.clone();
        let batches = batches[from..to].to_vec();
        let positions: Vec<u64> = (from as u64 + 1..=to as u64).collect();
        async move { sink.ingest_delivery(batches, marks(&positions)).await }
    };
    // Writes without positions cannot be matched across replicas: refused.
    let sink = a.shard_sinks()[0].1.clone();
    let refused = sink.ingest(vec![batches[0].clone()]).await.unwrap_err();
    assert!(refused.to_string().contains("replicated"), "{refused}");

    // Both replicas take batches 1-3; a leads, so only a holds them in memory.
    for r in [&a, &b] {
        deliver(r, 0, 3).await.unwrap();
    }
    assert_eq!(a.lead(0, Default::default()).await.unwrap(), 90);
    assert!(a.leads(0) && !b.leads(0));
    assert_eq!(
        all_spans(&a, ScanRequest::all(Signal::Spans)).await,
        expected(&batches[..3])
    );
    assert!(
        all_spans(&b, ScanRequest::all(Signal::Spans))
            .await
            .is_empty()
    );
    assert!(
        a.snapshot(&SnapshotRequest::all(Signal::Spans, None, None), None)
            .unwrap()
            .shards
            == vec![0]
    );
    assert!(
        b.snapshot(&SnapshotRequest::all(Signal::Spans, None, None), None)
            .unwrap()
            .shards
            .is_empty()
    );

    // a flushes batches 1-3. Once b takes in the commit, its WAL files holding only them go.
    a.flush().await.unwrap();
    let b_dir = dir.path().join("b");
    assert!(has_wal_file(&b_dir, 1));
    let mut trimmed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !has_wal_file(&b_dir, 1) {
            trimmed = true;
            break;
        }
    }
    assert!(trimmed, "b kept the WAL file the leader flushed");
    deliver(&b, 3, 4).await.unwrap();
    // A batch the leader flushed, delivered late to b, is acknowledged and not kept.
    deliver(&b, 2, 3).await.unwrap();

    // a takes batch 4 too and dies unflushed; b takes 5 and 6, then takes the shard over with
    // the checkpoint: it replays 4-6 (not 1-3, which are in a segment).
    deliver(&a, 3, 4).await.unwrap();
    drop(a);
    deliver(&b, 4, 6).await.unwrap();
    let checkpoint = catalog.load().await.unwrap().shards[&0].delivered.clone();
    assert_eq!(b.lead(0, checkpoint).await.unwrap(), 90);
    assert_eq!(
        all_spans(&b, ScanRequest::all(Signal::Spans)).await,
        expected(&batches)
    );

    // b flushes; a comes back as a follower: nothing of its WAL is replayed into memory, and
    // the rows are still there once each.
    b.flush().await.unwrap();
    let a = replica(dir.path(), "a", &catalog).await;
    assert!(!a.leads(0));
    assert_eq!(
        all_spans(&b, ScanRequest::all(Signal::Spans)).await,
        expected(&batches)
    );
    // b stops leading (its lease went to a): its memory empties, and a replays nothing, since
    // b flushed everything.
    deliver(&b, 0, 6).await.unwrap();
    b.follow(0).await.unwrap();
    let checkpoint = catalog.load().await.unwrap().shards[&0].delivered.clone();
    assert_eq!(a.lead(0, checkpoint).await.unwrap(), 0);
    assert_eq!(
        all_spans(&a, ScanRequest::all(Signal::Spans)).await,
        expected(&batches)
    );
    a.shutdown().await;
    b.shutdown().await;
}
