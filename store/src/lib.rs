//! oxeye store: where acknowledged telemetry lives.
//!
//! This crate owns the shard engine: the write-ahead log (durability before acknowledgement,
//! group commit), memtables (unflushed rows, visible to queries at once), immutable Parquet
//! segments with a tantivy index each, the catalog that says which segments exist, compaction,
//! retention and the disk-space guard, and the read API the query layer scans through,
//! including other store nodes' shards through their snapshots on a query node ([`remote`]),
//! and exactly-once delivery from collectors: the positions each shard holds ([`delivery`]).
//!
//! It must not parse SQL or know about HTTP; it speaks Arrow batches in, Arrow batches out. The
//! pure parts (WAL record format, segment sorting and encoding, index building, catalog changes)
//! are plain functions tested without a running store; `Store` wires them to threads, tasks,
//! files and object storage.

pub mod cache;
pub mod catalog;
pub mod config;
pub mod delivery;
pub mod error;
pub mod index;
mod maintenance;
pub mod memtable;
pub mod metrics;
pub mod remote;
pub mod scan;
pub mod segment;
pub mod shard;
pub mod storage;
#[cfg(test)]
mod test_support;
pub mod wal;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use futures::stream::{BoxStream, StreamExt};
use oxeye_model::Signal;
use oxeye_model::ingest::Ingest;
use parking_lot::{Mutex, RwLock};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use catalog::{CatalogState, FileMetastore, Metastore};
pub use config::StoreConfig;
pub use error::StoreError;
pub use index::{IndexPredicate, TextQuery};
pub use remote::{
    PartialAggregator, PinRelease, PinRequest, PinnedRows, RemoteShards, RowFilterCompiler,
    ShardSnapshot, SnapshotRequest,
};
pub use scan::{RowFilterStage, RowPredicate, ScanPart, ScanPlan, ScanRequest, ScanStats};
pub use segment::{SegmentMeta, SegmentRef};
pub use storage::{S3Options, Storage};

use crate::delivery::Delivered;
use crate::memtable::ReadState;
use crate::metrics::{ShardLabels, SignalLabels, StoreMetrics};
use crate::scan::Caches;
use crate::shard::WalCommand;
use crate::shard::{ShardHandle, ShardSink};
use tokio::sync::oneshot;

/// Memory for opened segment indexes.
const INDEX_CACHE_BYTES: usize = 512 * 1024 * 1024;
/// Parquet footers kept open.
const FOOTER_CACHE_ENTRIES: usize = 4096;
/// Delay clients are told to wait when the store pushes back.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A running store: every shard of this process, its segments and background work.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: Arc<StoreConfig>,
    pub storage: Storage,
    pub catalog: Arc<dyn Metastore>,
    pub state: Arc<RwLock<ReadState>>,
    pub shards: Vec<ShardHandle>,
    pub sinks: Vec<Arc<ShardSink>>,
    pub caches: Caches,
    pub metrics: StoreMetrics,
    pub disk_ok: Arc<AtomicBool>,
    /// Segments removed from the catalog, deleted from storage once no query holds them.
    pub pending_deletes: Mutex<Vec<(SegmentRef, Instant)>>,
    /// One flush at a time per shard (the background flusher and explicit flushes).
    pub flush_locks: BTreeMap<u32, tokio::sync::Mutex<()>>,
    /// Per shard: wakes its flusher early.
    pub flush_now: BTreeMap<u32, Arc<tokio::sync::Notify>>,
    /// One merge or retention pass at a time.
    pub maintenance_lock: tokio::sync::Mutex<()>,
    pub shutdown: CancellationToken,
    pub tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Store nodes' snapshots, on a query node in a cluster (see [`remote`]).
    pub remote: std::sync::OnceLock<Arc<dyn RemoteShards>>,
    /// Unflushed rows set aside for query nodes' scans (see [`remote::PinnedRows`]).
    pub pins: Mutex<remote::Pins>,
    /// The shards whose rows this node holds in memory, serves in snapshots, flushes, compacts
    /// and expires: all of its shards, unless they are replicated ([`StoreConfig::replicated`]),
    /// in which case those it leads.
    pub leading: RwLock<BTreeSet<u32>>,
}

impl Inner {
    pub(crate) fn leads(&self, shard: u32) -> bool {
        self.leading.read().contains(&shard)
    }
}

/// `series` terms of unflushed rows, computed from their dictionary columns.
fn memory_series(
    signal: Signal,
    batches: &[RecordBatch],
    prefix: &str,
) -> std::collections::BTreeSet<String> {
    fn text<'a>(r: &Option<oxeye_model::DictReader<'a>>, row: usize) -> &'a str {
        r.as_ref().and_then(|d| d.opt(row)).unwrap_or("")
    }
    let mut out = std::collections::BTreeSet::new();
    for b in batches {
        let col = |name: &str| {
            b.column_by_name(name)
                .and_then(|c| oxeye_model::DictReader::new(c.as_ref()))
        };
        let (service, kind, name) = (col("service_name"), col("kind"), col("name"));
        for row in 0..b.num_rows() {
            let term = index::series_term(
                signal,
                text(&service, row),
                text(&kind, row),
                text(&name, row),
            );
            if term.starts_with(prefix) {
                out.insert(term);
            }
        }
    }
    out
}

/// What a read sees (see [`Store::visible`]).
struct Visible {
    segments: Vec<SegmentRef>,
    memory: Vec<RecordBatch>,
    /// Rows store nodes set aside for the read.
    pinned: Vec<PinnedRows>,
    /// Unflushed rows that came from store nodes with their snapshots.
    snapshot_rows: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.inner.config.data_dir)
            .field("storage", &self.inner.storage.description())
            .finish()
    }
}

impl Store {
    /// Opens the store on the embedded defaults: segments under `data_dir/objects`, catalog in
    /// `data_dir/catalog.json`.
    pub async fn open_local(
        config: StoreConfig,
        registry: &mut Registry,
    ) -> Result<Store, StoreError> {
        let storage = Storage::local(&config.data_dir.join("objects"))?;
        let catalog: Arc<dyn Metastore> = Arc::new(FileMetastore::new(&config.data_dir));
        Store::open(config, storage, catalog, registry).await
    }

    /// Opens the store: loads the catalog, replays each shard's WAL and starts flushing,
    /// compaction, retention and the disk guard.
    pub async fn open(
        config: StoreConfig,
        storage: Storage,
        catalog: Arc<dyn Metastore>,
        registry: &mut Registry,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StoreError::io("creating the data directory", &config.data_dir, e))?;
        let metrics = StoreMetrics::register(registry);
        let catalog_state = catalog.load().await?;
        let state = Arc::new(RwLock::new(ReadState::default()));
        {
            let mut st = state.write();
            for seg in &catalog_state.segments {
                st.add_segment(Arc::new(seg.clone()));
            }
            st.generation = catalog_state.generation;
        }
        let config = Arc::new(config);
        let disk_ok = Arc::new(AtomicBool::new(true));
        let mut shards = Vec::new();
        let mut sinks = Vec::new();
        let mut flush_locks = BTreeMap::new();
        let mut flush_now = BTreeMap::new();
        let leading: BTreeSet<u32> = if config.replicated {
            BTreeSet::new()
        } else {
            config.shard_ids().into_iter().collect()
        };
        for id in config.shard_ids() {
            let checkpoint = catalog_state.shards.get(&id).cloned().unwrap_or_default();
            let handle = shard::open(id, &config, &checkpoint, state.clone(), metrics.clone())?;
            let notify = Arc::new(tokio::sync::Notify::new());
            flush_now.insert(id, notify.clone());
            sinks.push(Arc::new(ShardSink {
                flush_now: notify,
                id,
                tx: handle.tx.clone(),
                state: state.clone(),
                config: config.clone(),
                disk_ok: disk_ok.clone(),
                metrics: metrics.clone(),
                retry_after: RETRY_AFTER,
            }));
            flush_locks.insert(id, tokio::sync::Mutex::new(()));
            shards.push(handle);
        }
        let store = Store {
            inner: Arc::new(Inner {
                config,
                storage,
                catalog,
                state,
                shards,
                sinks,
                caches: Caches::new(INDEX_CACHE_BYTES, FOOTER_CACHE_ENTRIES),
                metrics,
                disk_ok,
                pending_deletes: Mutex::new(Vec::new()),
                flush_locks,
                flush_now,
                maintenance_lock: tokio::sync::Mutex::new(()),
                shutdown: CancellationToken::new(),
                tasks: Mutex::new(Vec::new()),
                remote: std::sync::OnceLock::new(),
                pins: Mutex::new(remote::Pins::default()),
                leading: RwLock::new(leading),
            }),
        };
        Store::update_segment_gauges(&store.inner);
        maintenance::start(&store.inner);
        tracing::info!(
            data_dir = %store.inner.config.data_dir.display(),
            storage = store.inner.storage.description(),
            shards = store.inner.shards.len(),
            segments = catalog_state.segments.len(),
            "store open"
        );
        Ok(store)
    }

    /// Ingest sinks, one per shard, for the collector's router: `(shard id, sink)`.
    pub fn shard_sinks(&self) -> Vec<(u32, Arc<dyn Ingest>)> {
        self.inner
            .sinks
            .iter()
            .map(|s| (s.id, s.clone() as Arc<dyn Ingest>))
            .collect()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// Committed segments of a signal, as queries see them now.
    pub fn segments(&self, signal: Signal) -> Vec<SegmentRef> {
        self.inner
            .state
            .read()
            .segments
            .get(&signal)
            .cloned()
            .unwrap_or_default()
    }

    /// Lets queries read other nodes' shards through their snapshots (a query node in a
    /// cluster); set once.
    pub fn set_remote_shards(&self, remote: Arc<dyn RemoteShards>) {
        if self.inner.remote.set(remote).is_err() {
            tracing::warn!("remote shards were set already; keeping the first");
        }
    }

    /// Whether reads take in other nodes' snapshots (a query node in a cluster).
    pub fn has_remote_shards(&self) -> bool {
        self.inner.remote.get().is_some()
    }

    /// This node's shards at one instant: committed segments of the request's signal and the
    /// unflushed rows it keeps (see [`SnapshotRequest::apply`]), taken under one lock so each
    /// row is in exactly one of them. With `pin`, more unflushed rows than it lets travel now
    /// are set aside for the query instead ([`ShardSnapshot::pinned`], read with
    /// [`Store::read_pinned`]); a trace lookup or a `LIMIT` always travels now, being small.
    pub fn snapshot(
        &self,
        request: &SnapshotRequest,
        pin: Option<PinRequest>,
    ) -> Result<ShardSnapshot, StoreError> {
        let (signal, start, end) = (request.signal, request.start, request.end);
        let shards: Vec<u32> = self.inner.leading.read().iter().copied().collect();
        let st = self.inner.state.read();
        let segments = st
            .segments
            .get(&signal)
            .map(|list| {
                list.iter()
                    .filter(|s| shards.contains(&s.shard) && s.overlaps(start, end))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        // Only the shards this node leads: a shard changing hands may still have rows here
        // for a moment, and its new leader serves them.
        let batches = st.memory_batches_of(signal, start, end, |id| shards.contains(&id));
        drop(st);
        self.inner.metrics.snapshots.inc();
        let node = self.inner.config.data_dir.display().to_string();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let pin = pin.filter(|p| {
            request.trace_id.is_none() && request.limit.is_none() && rows > p.inline_rows
        });
        let batches = match pin {
            None => batches,
            Some(p) => {
                let mut pins = self.inner.pins.lock();
                match pins.pin(
                    signal,
                    batches,
                    p.ttl,
                    self.inner.config.max_unflushed_bytes,
                ) {
                    Ok(id) => {
                        self.update_pin_gauges(&pins);
                        return Ok(ShardSnapshot {
                            pinned: Some(PinnedRows {
                                node: node.clone(),
                                id,
                                rows: rows as u64,
                                budget: Default::default(),
                                release: remote::PinRelease::none(),
                            }),
                            node,
                            shards,
                            segments,
                            batches: Vec::new(),
                            serves: self.shard_ids(),
                        });
                    }
                    Err(batches) => {
                        tracing::debug!("too many snapshots set aside; this one travels whole");
                        batches
                    }
                }
            }
        };
        let batches = request.apply(batches)?;
        self.inner
            .metrics
            .snapshot_rows
            .inc_by(batches.iter().map(|b| b.num_rows() as u64).sum());
        Ok(ShardSnapshot {
            node,
            shards,
            segments,
            batches,
            pinned: None,
            serves: self.shard_ids(),
        })
    }

    /// The rows set aside under `id` (by [`Store::snapshot`]) that `request` keeps; given once,
    /// to be sent to the query node, or aggregated here (`to_aggregate`).
    pub fn read_pinned(
        &self,
        id: u64,
        request: &SnapshotRequest,
        to_aggregate: bool,
    ) -> Result<Vec<RecordBatch>, StoreError> {
        let taken = {
            let mut pins = self.inner.pins.lock();
            let taken = pins.take(id, request.signal);
            self.update_pin_gauges(&pins);
            taken
        };
        let batches = taken.ok_or_else(|| StoreError::Invalid {
            reason: format!(
                "no unflushed {} rows are set aside under {id}: they were read already, waited \
                 longer than the query's timeout, or this node restarted; run the query again",
                request.signal
            ),
        })?;
        let batches = request.apply(batches)?;
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        if to_aggregate {
            self.inner.metrics.partial_aggregate_rows.inc_by(rows);
        } else {
            self.inner.metrics.snapshot_rows.inc_by(rows);
        }
        Ok(batches)
    }

    /// Drops the rows set aside under `id`: the query is done without them.
    pub fn release_pinned(&self, id: u64) {
        let mut pins = self.inner.pins.lock();
        if pins.remove(id).is_some() {
            self.update_pin_gauges(&pins);
        }
    }

    fn update_pin_gauges(&self, pins: &remote::Pins) {
        let (entries, rows) = pins.usage();
        self.inner.metrics.snapshot_pins.set(entries as i64);
        self.inner
            .metrics
            .snapshot_pinned_rows
            .set(i64::try_from(rows).unwrap_or(i64::MAX));
    }

    /// Starts leading `shard` (a replicated one): its WAL past `flushed`, the checkpoint read
    /// when the lease was taken, comes into memory, and from now on this node serves, flushes
    /// and compacts the shard. Returns the rows replayed.
    pub async fn lead(&self, shard: u32, flushed: Delivered) -> Result<usize, StoreError> {
        let handle = self.handle(shard)?;
        let (ack, done) = oneshot::channel();
        handle
            .tx
            .send(WalCommand::Lead { flushed, ack })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        let rows = done.await.map_err(|_| StoreError::ShuttingDown)??;
        if self.inner.leading.write().insert(shard) {
            self.inner.metrics.lease_takeovers.inc();
        }
        self.inner
            .metrics
            .shard_leader
            .get_or_create(&ShardLabels { shard })
            .set(1);
        Ok(rows)
    }

    /// Stops leading `shard`: another replica took it over. Its unflushed rows leave memory
    /// (the WAL keeps them; the new leader flushes its own copy).
    pub async fn follow(&self, shard: u32) -> Result<(), StoreError> {
        let handle = self.handle(shard)?;
        self.inner.leading.write().remove(&shard);
        self.inner
            .metrics
            .shard_leader
            .get_or_create(&ShardLabels { shard })
            .set(0);
        let (ack, done) = oneshot::channel();
        handle
            .tx
            .send(WalCommand::Follow { ack })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        done.await.map_err(|_| StoreError::ShuttingDown)
    }

    /// Whether this node leads `shard` now.
    pub fn leads(&self, shard: u32) -> bool {
        self.inner.leads(shard)
    }

    /// The shards this process serves (leading or following).
    pub fn shard_ids(&self) -> Vec<u32> {
        self.inner.shards.iter().map(|s| s.id).collect()
    }

    fn handle(&self, shard: u32) -> Result<&ShardHandle, StoreError> {
        self.inner
            .shards
            .iter()
            .find(|s| s.id == shard)
            .ok_or_else(|| StoreError::Invalid {
                reason: format!("this node does not serve shard {shard}"),
            })
    }

    /// Every committed segment.
    pub fn all_segments(&self) -> Vec<SegmentRef> {
        self.inner
            .state
            .read()
            .segments
            .values()
            .flat_map(|v| v.iter().cloned())
            .collect()
    }

    /// Unflushed bytes and rows per shard: `(shard, active rows, active bytes, frozen memtables)`.
    pub fn memtable_stats(&self) -> Vec<(u32, usize, usize, usize)> {
        self.inner
            .state
            .read()
            .shards
            .iter()
            .map(|(id, m)| (*id, m.active.rows, m.unflushed_bytes(), m.frozen.len()))
            .collect()
    }

    /// What a read of `signal` sees: committed segments and unflushed batches in the time
    /// range, this node's own and, on a query node, the store nodes' snapshots of theirs (with
    /// `pin`, big ones stay on their nodes until the scan reads them).
    async fn visible(&self, request: &ScanRequest, pin: bool) -> Result<Visible, StoreError> {
        let (signal, start, end) = (request.signal, request.start, request.end);
        let snapshots = match self.inner.remote.get() {
            Some(remote) => Some(remote.snapshots(request, pin).await?),
            None => None,
        };
        let (segments, mut memory) = {
            let st = self.inner.state.read();
            (
                st.segments.get(&signal).cloned().unwrap_or_default(),
                st.memory_batches(signal, start, end),
            )
        };
        Ok(match snapshots {
            None => Visible {
                segments,
                memory,
                pinned: Vec::new(),
                snapshot_rows: 0,
            },
            Some(snapshots) => {
                let (segments, remote_rows, pinned) =
                    remote::merge_snapshots(signal, segments, snapshots);
                let snapshot_rows = remote_rows.iter().map(|b| b.num_rows() as u64).sum();
                memory.extend(remote_rows);
                Visible {
                    segments,
                    memory,
                    pinned,
                    snapshot_rows,
                }
            }
        })
    }

    /// Plans a scan: which segments (and which granules of them), which memory batches, and
    /// which rows store nodes set aside for it.
    pub async fn plan_scan(&self, request: ScanRequest) -> Result<ScanPlan, StoreError> {
        let visible = self.visible(&request, true).await?;
        let mut plan = scan::plan(
            request,
            visible.segments,
            visible.memory,
            visible.pinned,
            &self.inner.storage,
            &self.inner.caches,
        )
        .await?;
        plan.stats.snapshot_rows = visible.snapshot_rows;
        let m = &self.inner.metrics;
        m.scan_segments_pruned.inc_by(
            (plan.stats.segments_pruned_by_time + plan.stats.segments_pruned_by_index) as u64,
        );
        if plan.request.index.is_some() {
            m.index_searches.inc();
        }
        m.index_cache_bytes
            .set(self.inner.caches.index_bytes() as i64);
        Ok(plan)
    }

    /// Reads one part of a plan; `projection` holds storage-schema column indices.
    pub async fn read_part(
        &self,
        plan: &ScanPlan,
        part: &ScanPart,
        projection: Option<Vec<usize>>,
        batch_size: usize,
    ) -> Result<BoxStream<'static, Result<RecordBatch, StoreError>>, StoreError> {
        if let ScanPart::Remote(pinned) = part {
            let rows = self.remote()?.fetch(pinned, &plan.request, None).await?;
            let request = plan.request.clone();
            return Ok(rows
                .map(move |b| {
                    b.and_then(|b| scan::read_memory_batch(&request, &b, projection.as_deref()))
                })
                .boxed());
        }
        if matches!(part, ScanPart::Segment { .. }) {
            self.inner.metrics.scan_segments_read.inc();
        }
        scan::read_part(
            part,
            &plan.request,
            projection,
            batch_size,
            &self.inner.storage,
            &self.inner.caches,
            &self.inner.metrics,
        )
        .await
    }

    /// The states of a partial aggregate (encoded by the query layer) that the store node which
    /// set `pinned` aside computes over those of its rows `request` keeps.
    pub async fn aggregate_remote(
        &self,
        pinned: &PinnedRows,
        request: &ScanRequest,
        plan: Arc<Vec<u8>>,
    ) -> Result<BoxStream<'static, Result<RecordBatch, StoreError>>, StoreError> {
        self.remote()?.fetch(pinned, request, Some(plan)).await
    }

    fn remote(&self) -> Result<&Arc<dyn RemoteShards>, StoreError> {
        self.inner.remote.get().ok_or_else(|| StoreError::Invalid {
            reason: "rows set aside on a store node, read on a node that reads none".into(),
        })
    }

    /// Plans and reads everything, part after part.
    pub async fn scan(
        &self,
        request: ScanRequest,
        projection: Option<Vec<usize>>,
    ) -> Result<BoxStream<'static, Result<RecordBatch, StoreError>>, StoreError> {
        let plan = Arc::new(self.plan_scan(request).await?);
        let store = self.clone();
        let parts: Vec<ScanPart> = plan.parts.clone();
        let stream = futures::stream::iter(parts)
            .then(move |part| {
                let store = store.clone();
                let plan = plan.clone();
                let projection = projection.clone();
                async move { store.read_part(&plan, &part, projection, 8192).await }
            })
            .map(|r| match r {
                Ok(s) => s,
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten();
        Ok(stream.boxed())
    }

    /// Distinct `series` terms of a signal (see [`index::series_term`]) starting with `prefix`,
    /// over segments overlapping the time range and unflushed rows: the services, operations
    /// and metric names there are, without scanning rows.
    pub async fn series(
        &self,
        signal: Signal,
        prefix: &str,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let storage = signal.schema();
        // Only what a series term is made of travels from store nodes.
        let columns = ["service_name", "kind", "name"]
            .into_iter()
            .filter_map(|n| storage.index_of(n).ok())
            .collect();
        let request = ScanRequest {
            start,
            end,
            columns: Some(columns),
            ..ScanRequest::all(signal)
        };
        let Visible {
            segments, memory, ..
        } = self.visible(&request, false).await?;
        let mut out = std::collections::BTreeSet::new();
        for seg in segments.iter().filter(|s| s.overlaps(start, end)) {
            let index = self.inner.caches.index(&self.inner.storage, seg).await?;
            out.extend(index.series_terms(prefix)?);
        }
        let prefix = prefix.to_string();
        let from_memory =
            tokio::task::spawn_blocking(move || memory_series(signal, &memory, &prefix))
                .await
                .map_err(|e| StoreError::index("listing series", e))?;
        out.extend(from_memory);
        Ok(out)
    }

    /// Flushes every shard's unflushed rows into segments now.
    pub async fn flush(&self) -> Result<(), StoreError> {
        for shard in &self.inner.shards {
            maintenance::flush_shard(&self.inner, shard.id, true).await?;
        }
        Ok(())
    }

    /// Runs compaction until nothing is left to merge; returns the number of merges.
    pub async fn compact(&self) -> Result<usize, StoreError> {
        let mut merges = 0;
        while maintenance::compact_once(&self.inner).await? {
            merges += 1;
        }
        Ok(merges)
    }

    /// Applies retention now; returns the number of segments dropped.
    pub async fn enforce_retention(&self) -> Result<usize, StoreError> {
        maintenance::retention(&self.inner).await
    }

    /// Deletes storage objects of removed segments that no query holds any more.
    pub async fn collect_garbage(&self, ignore_grace: bool) -> Result<usize, StoreError> {
        maintenance::delete_pending(&self.inner, ignore_grace).await
    }

    /// Stops background work and flushes every acknowledged row into segments.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        if let Err(e) = self.flush().await {
            // Nothing is lost: the rows stay in the WAL and are replayed at the next start.
            tracing::warn!(error = %e, "final flush failed; the WAL keeps the rows for the next start");
        }
        tracing::info!("store stopped");
    }

    pub(crate) fn update_segment_gauges(inner: &Inner) {
        let st = inner.state.read();
        for signal in Signal::ALL {
            let segs = st
                .segments
                .get(&signal)
                .map(|v| v.as_slice())
                .unwrap_or(&[]);
            let labels = SignalLabels {
                signal: signal.table_name(),
            };
            inner
                .metrics
                .segments
                .get_or_create(&labels)
                .set(segs.len() as i64);
            inner.metrics.segment_bytes.get_or_create(&labels).set(
                segs.iter()
                    .map(|s| (s.data_bytes + s.index_bytes) as i64)
                    .sum(),
            );
            inner
                .metrics
                .segment_rows
                .get_or_create(&labels)
                .set(segs.iter().map(|s| s.rows as i64).sum());
        }
    }
}
