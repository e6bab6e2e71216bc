//! A shard: its WAL writer thread (group commit) and its flusher.
//!
//! Ordering is what keeps data exactly-once. One thread owns the WAL file: it appends a group of
//! records, fsyncs once, inserts the batches into the active memtable and only then
//! acknowledges the writers. Sealing (closing the WAL file and freezing the active memtable) is
//! a command on the same thread, so a frozen memtable holds exactly the rows of WAL files up to
//! its sealed sequence number. The flusher writes it as segments, commits the catalog with
//! `flushed_wal_seq = sealed`, swaps it for the segments in the read state (one lock), and only
//! then deletes those WAL files. A crash at any point either replays a WAL file or finds its rows
//! in a committed segment, never both.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oxeye_model::SignalBatch;
use oxeye_model::ingest::{Ingest, IngestError};
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{CatalogChange, ShardCheckpoint};
use crate::delivery::{self, Delivered, Marks};
use crate::memtable::{Frozen, MemBatch, ReadState};
use crate::metrics::StoreMetrics;
use crate::segment::build_segment;
use crate::wal::{self, WalFile};
use crate::{Inner, StoreConfig, StoreError};

/// Most appends one fsync covers.
const MAX_GROUP: usize = 256;

pub(crate) enum WalCommand {
    Append {
        /// The framed WAL record (encoded by the caller, off this thread).
        framed: Vec<u8>,
        batches: Vec<MemBatchFor>,
        /// Where each batch stands in its collector's stream, for exactly-once delivery.
        marks: Option<Marks>,
        ack: oneshot::Sender<Result<Written, StoreError>>,
    },
    /// Close the current WAL file and freeze the active memtable (if it holds anything).
    Seal {
        ack: oneshot::Sender<Result<Option<u64>, StoreError>>,
    },
}

pub(crate) struct MemBatchFor {
    signal: oxeye_model::Signal,
    batch: MemBatch,
}

/// What an append did: batches that were already held (redelivered) are acknowledged without
/// being written again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub batches: usize,
    pub rows: usize,
    pub duplicates: usize,
}

/// Replays a shard's WAL into `state` and starts its writer thread.
pub(crate) fn open(
    id: u32,
    config: &StoreConfig,
    checkpoint: &ShardCheckpoint,
    state: Arc<RwLock<ReadState>>,
    metrics: StoreMetrics,
) -> Result<ShardHandle, StoreError> {
    let dir = config.data_dir.join("wal").join(format!("shard-{id:04}"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| StoreError::io("creating the WAL directory", &dir, e))?;
    let flushed_wal_seq = checkpoint.flushed_wal_seq;
    let mut delivered = checkpoint.delivered.clone();
    let mut next_seq = flushed_wal_seq + 1;
    let mut replayed_rows = 0usize;
    for seq in wal::list(&dir)? {
        let path = dir.join(wal::file_name(seq));
        if seq <= flushed_wal_seq {
            // Its rows are already in committed segments; the flusher stopped before deleting it.
            std::fs::remove_file(&path)
                .map_err(|e| StoreError::io("deleting a flushed WAL file", &path, e))?;
            continue;
        }
        let replayed = wal::replay_file(&path)?;
        if let Some(cut) = &replayed.cut {
            tracing::warn!(
                shard = id,
                file = %path.display(),
                offset = cut.offset,
                dropped_bytes = cut.dropped_bytes,
                reason = %cut.reason,
                "cut a torn or corrupt WAL tail; the intact records before it were recovered"
            );
            metrics.wal_tails_cut.inc();
        }
        delivery::merge(&mut delivered, &replayed.delivered);
        let mut st = state.write();
        let mem = st.shards.entry(id).or_default();
        for b in replayed.batches {
            replayed_rows += b.num_rows();
            mem.active.insert(b.signal, MemBatch::new(b));
        }
        next_seq = next_seq.max(seq + 1);
    }
    if replayed_rows > 0 {
        tracing::info!(shard = id, rows = replayed_rows, "replayed the WAL");
    }
    state.write().shards.entry(id).or_default();
    let file = WalFile::create(&dir, next_seq)?;
    let (tx, rx) = mpsc::channel::<WalCommand>(1024);
    let thread_state = state.clone();
    let thread_metrics = metrics.clone();
    let thread = std::thread::Builder::new()
        .name(format!("oxeye-wal-{id}"))
        .spawn(move || wal_thread(id, dir, file, delivered, rx, thread_state, thread_metrics))
        .map_err(|e| StoreError::io("starting the WAL thread", "wal", e))?;
    Ok(ShardHandle {
        id,
        tx,
        _thread: thread,
    })
}

pub(crate) struct ShardHandle {
    pub id: u32,
    pub tx: mpsc::Sender<WalCommand>,
    /// The WAL thread ends once every sender is dropped; nothing needs to join it, since each
    /// acknowledged write was synced before its acknowledgement.
    pub _thread: std::thread::JoinHandle<()>,
}

fn wal_thread(
    id: u32,
    dir: PathBuf,
    mut file: WalFile,
    mut delivered: Delivered,
    mut rx: mpsc::Receiver<WalCommand>,
    state: Arc<RwLock<ReadState>>,
    metrics: StoreMetrics,
) {
    let mut pending: Option<WalCommand> = None;
    loop {
        let first = match pending.take() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(c) => c,
                None => break,
            },
        };
        match first {
            WalCommand::Seal { ack } => {
                let _ = ack.send(seal(id, &dir, &mut file, &delivered, &state));
            }
            append @ WalCommand::Append { .. } => {
                let mut group = vec![append];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(c @ WalCommand::Append { .. }) => group.push(c),
                        Ok(seal) => {
                            pending = Some(seal);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let started = Instant::now();
                // Redelivered batches are dropped here, on the one thread that orders the
                // shard's writes, so two deliveries of one batch cannot both pass the check.
                let mut held = Delivered::new();
                let mut written = Vec::with_capacity(group.len());
                let mut refused = Vec::new();
                for c in std::mem::take(&mut group) {
                    let WalCommand::Append {
                        mut framed,
                        mut batches,
                        marks,
                        ack,
                    } = c
                    else {
                        continue;
                    };
                    match drop_duplicates(&delivered, &mut held, &mut framed, &mut batches, &marks)
                    {
                        Ok(w) => {
                            written.push(w);
                            group.push(WalCommand::Append {
                                framed,
                                batches,
                                marks,
                                ack,
                            });
                        }
                        Err(e) => refused.push((ack, e)),
                    }
                }
                for (ack, e) in refused {
                    let _ = ack.send(Err(e));
                }
                let framed: Vec<Vec<u8>> = group
                    .iter_mut()
                    .filter_map(|c| match c {
                        WalCommand::Append { framed, .. } if !framed.is_empty() => {
                            Some(std::mem::take(framed))
                        }
                        _ => None,
                    })
                    .collect();
                let bytes: usize = framed.iter().map(Vec::len).sum();
                let result = if framed.is_empty() {
                    Ok(())
                } else {
                    let r = file.append_durably(&framed);
                    metrics
                        .wal_fsync_seconds
                        .observe(started.elapsed().as_secs_f64());
                    metrics.wal_group_size.observe(group.len() as f64);
                    r
                };
                match result {
                    Ok(()) => {
                        if !framed.is_empty() {
                            metrics.wal_bytes.inc_by(bytes as u64);
                            metrics.wal_fsyncs.inc();
                        }
                        delivery::merge(&mut delivered, &held);
                        let mut acks = Vec::with_capacity(group.len());
                        {
                            let mut st = state.write();
                            let mem = st.shards.entry(id).or_default();
                            for (c, w) in group.into_iter().zip(&written) {
                                if let WalCommand::Append { batches, ack, .. } = c {
                                    for b in batches {
                                        mem.active.insert(b.signal, b.batch);
                                    }
                                    acks.push((ack, *w));
                                }
                            }
                            metrics.memtable_bytes.set(mem.unflushed_bytes() as i64);
                        }
                        for (ack, w) in acks {
                            metrics.duplicate_batches.inc_by(w.duplicates as u64);
                            let _ = ack.send(Ok(w));
                        }
                    }
                    Err(e) => {
                        tracing::error!(shard = id, error = %e, "WAL append failed; the writes were refused");
                        let message = e.to_string();
                        let disk_full = e.is_disk_full();
                        for c in group {
                            if let WalCommand::Append { ack, .. } = c {
                                let err = if disk_full {
                                    StoreError::Overloaded(format!(
                                        "the WAL disk is full: {message}"
                                    ))
                                } else {
                                    StoreError::Invalid {
                                        reason: format!("WAL write failed: {message}"),
                                    }
                                };
                                let _ = ack.send(Err(err));
                            }
                        }
                    }
                }
            }
        }
    }
    tracing::debug!(shard = id, "WAL thread stopped");
}

/// Drops from one append the batches its producer already delivered (against `delivered`,
/// and `held`: what earlier appends of the same group will hold), re-encoding the WAL record
/// when only some are dropped. Leaves `framed` empty when nothing is left to write.
fn drop_duplicates(
    delivered: &Delivered,
    held: &mut Delivered,
    framed: &mut Vec<u8>,
    batches: &mut Vec<MemBatchFor>,
    marks: &Option<Marks>,
) -> Result<Written, StoreError> {
    let total = batches.len();
    let rows = |batches: &[MemBatchFor]| batches.iter().map(|b| b.batch.batch.num_rows()).sum();
    let Some(m) = marks else {
        return Ok(Written {
            batches: total,
            rows: rows(batches),
            duplicates: 0,
        });
    };
    let stand: Vec<_> = batches
        .iter()
        .map(|b| b.signal)
        .zip(m.positions.iter().copied())
        .collect();
    let (keep, next) = delivery::fresh(&[delivered, held], &m.producer, &stand);
    let kept = keep.iter().filter(|k| **k).count();
    if kept < total {
        let kept_batches: Vec<SignalBatch> = batches
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(b, _)| SignalBatch::new(b.signal, b.batch.batch.clone()))
            .collect();
        let kept_positions: Vec<u64> = m
            .positions
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(p, _)| *p)
            .collect();
        *framed = if kept_batches.is_empty() {
            Vec::new()
        } else {
            let marks = Marks {
                producer: m.producer.clone(),
                positions: kept_positions,
            };
            wal::frame(&wal::encode_marked_record(&kept_batches, Some(&marks))?)
        };
        let mut flags = keep.iter();
        batches.retain(|_| flags.next().copied().unwrap_or(false));
    }
    delivery::merge(held, &next);
    Ok(Written {
        batches: kept,
        rows: rows(batches),
        duplicates: total - kept,
    })
}

fn seal(
    id: u32,
    dir: &std::path::Path,
    file: &mut WalFile,
    delivered: &Delivered,
    state: &Arc<RwLock<ReadState>>,
) -> Result<Option<u64>, StoreError> {
    {
        let st = state.read();
        if st.shards.get(&id).is_none_or(|m| m.active.is_empty()) {
            return Ok(None);
        }
    }
    let sealed = file.seq;
    let next = WalFile::create(dir, sealed + 1)?;
    *file = next;
    let mut st = state.write();
    let mem = st.shards.entry(id).or_default();
    let memtable = std::mem::take(&mut mem.active);
    mem.frozen.push(Arc::new(Frozen {
        memtable,
        sealed_wal_seq: sealed,
        delivered: delivered.clone(),
    }));
    Ok(Some(sealed))
}

/// The in-process ingest sink of one shard.
pub struct ShardSink {
    pub(crate) id: u32,
    pub(crate) tx: mpsc::Sender<WalCommand>,
    pub(crate) state: Arc<RwLock<ReadState>>,
    pub(crate) config: Arc<StoreConfig>,
    pub(crate) disk_ok: Arc<AtomicBool>,
    pub(crate) metrics: StoreMetrics,
    pub(crate) retry_after: Duration,
    /// Wakes the shard's flusher when unflushed data passes half its limit.
    pub(crate) flush_now: Arc<tokio::sync::Notify>,
}

impl ShardSink {
    pub async fn write(&self, batches: Vec<SignalBatch>) -> Result<(), StoreError> {
        self.write_delivery(batches, None).await.map(|_| ())
    }

    /// Writes batches that carry delivery marks (one position per batch): those the shard
    /// already holds are acknowledged without being written again.
    pub async fn write_delivery(
        &self,
        batches: Vec<SignalBatch>,
        marks: Option<Marks>,
    ) -> Result<Written, StoreError> {
        check_schemas(&batches).map_err(|reason| StoreError::Invalid { reason })?;
        if let Some(m) = &marks
            && m.positions.len() != batches.len()
        {
            return Err(StoreError::Invalid {
                reason: format!(
                    "{} delivery positions for {} batches",
                    m.positions.len(),
                    batches.len()
                ),
            });
        }
        if !self.disk_ok.load(Ordering::Relaxed) {
            return Err(StoreError::Overloaded(format!(
                "the data disk has less than {} bytes free",
                self.config.min_free_disk_bytes
            )));
        }
        let unflushed = self
            .state
            .read()
            .shards
            .get(&self.id)
            .map(|m| m.unflushed_bytes())
            .unwrap_or(0);
        if unflushed >= self.config.max_unflushed_bytes / 2 {
            self.flush_now.notify_one();
        }
        if unflushed > self.config.max_unflushed_bytes {
            return Err(StoreError::Overloaded(format!(
                "shard {} holds {unflushed} unflushed bytes, above the limit of {}; flushing is behind",
                self.id, self.config.max_unflushed_bytes
            )));
        }
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let bytes: usize = batches.iter().map(|b| b.memory_size()).sum();
        // Encoding is CPU work: keep it off the async runtime and off the WAL thread.
        let record_marks = marks.clone();
        let (framed, mem) = tokio::task::spawn_blocking(move || {
            let framed = wal::frame(&wal::encode_marked_record(&batches, record_marks.as_ref())?);
            let mem: Vec<MemBatchFor> = batches
                .into_iter()
                .map(|b| MemBatchFor {
                    signal: b.signal,
                    batch: MemBatch::new(b),
                })
                .collect();
            Ok::<_, StoreError>((framed, mem))
        })
        .await
        .map_err(|e| StoreError::Invalid {
            reason: format!("WAL encoding task failed: {e}"),
        })??;
        let (ack, done) = oneshot::channel();
        self.tx
            .send(WalCommand::Append {
                framed,
                batches: mem,
                marks,
                ack,
            })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        let written = done.await.map_err(|_| StoreError::ShuttingDown)??;
        let (rows, bytes) = if written.duplicates == 0 {
            (rows, bytes)
        } else {
            // Only what was written counts; bytes in proportion to its rows.
            let share = written.rows as f64 / rows.max(1) as f64;
            (written.rows, (bytes as f64 * share) as usize)
        };
        self.metrics.ingested_rows.inc_by(rows as u64);
        self.metrics.ingested_bytes.inc_by(bytes as u64);
        Ok(written)
    }
}

#[async_trait::async_trait]
impl Ingest for ShardSink {
    async fn ingest(&self, batches: Vec<SignalBatch>) -> Result<(), IngestError> {
        check_schemas(&batches).map_err(|reason| IngestError::Rejected { reason })?;
        self.write(batches).await.map_err(|e| self.refusal(e))
    }

    async fn ingest_delivery(
        &self,
        batches: Vec<SignalBatch>,
        marks: Marks,
    ) -> Result<(), IngestError> {
        // A malformed batch or mark fails the same way on every retry.
        check_schemas(&batches).map_err(|reason| IngestError::Rejected { reason })?;
        delivery::check_producer(&marks.producer).map_err(|e| IngestError::Rejected {
            reason: e.to_string(),
        })?;
        if marks.positions.len() != batches.len() {
            return Err(IngestError::Rejected {
                reason: format!(
                    "{} delivery positions for {} batches",
                    marks.positions.len(),
                    batches.len()
                ),
            });
        }
        self.write_delivery(batches, Some(marks))
            .await
            .map(|_| ())
            .map_err(|e| self.refusal(e))
    }
}

/// Every batch must have its signal's storage schema: the WAL, the flush and replay rely on it
/// (over Flight, batches come from other processes).
pub fn check_schemas(batches: &[SignalBatch]) -> Result<(), String> {
    for b in batches {
        let want = b.signal.schema();
        if b.batch.schema().fields() != want.fields() {
            return Err(format!(
                "a {} batch whose schema is not the store's: got {:?}",
                b.signal,
                b.batch
                    .schema()
                    .fields()
                    .iter()
                    .take(4)
                    .map(|f| format!("{}: {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

impl ShardSink {
    /// A store error as the ingest refusal (and retry advice) a client sees.
    fn refusal(&self, e: StoreError) -> IngestError {
        match e {
            StoreError::Overloaded(reason) => IngestError::Overloaded {
                reason,
                retry_after: self.retry_after,
            },
            StoreError::ShuttingDown => IngestError::Unavailable {
                reason: "the store is shutting down".into(),
                retry_after: self.retry_after,
            },
            other if other.is_disk_full() => IngestError::Overloaded {
                reason: other.to_string(),
                retry_after: self.retry_after,
            },
            other => IngestError::Unavailable {
                reason: other.to_string(),
                retry_after: self.retry_after,
            },
        }
    }
}

/// Seals the shard's memtable (if it has rows) and flushes every frozen memtable, oldest first.
pub(crate) async fn flush_shard(
    inner: &Inner,
    id: u32,
    tx: &mpsc::Sender<WalCommand>,
    seal_first: bool,
) -> Result<(), StoreError> {
    if seal_first {
        let (ack, done) = oneshot::channel();
        tx.send(WalCommand::Seal { ack })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        done.await.map_err(|_| StoreError::ShuttingDown)??;
    }
    loop {
        let frozen = inner
            .state
            .read()
            .shards
            .get(&id)
            .and_then(|m| m.frozen.first().cloned());
        let Some(frozen) = frozen else { return Ok(()) };
        flush_frozen(inner, id, &frozen).await?;
    }
}

/// Writes one sealed memtable as segments, in a `store.flush` span (for `--self-trace`).
async fn flush_frozen(inner: &Inner, id: u32, frozen: &Arc<Frozen>) -> Result<(), StoreError> {
    use tracing::Instrument;

    let span = tracing::info_span!(
        "store.flush",
        shard = id,
        wal_seq = frozen.sealed_wal_seq,
        error = tracing::field::Empty,
    );
    let result = write_frozen(inner, id, frozen)
        .instrument(span.clone())
        .await;
    if let Err(e) = &result {
        span.record("error", e.to_string());
    }
    result
}

async fn write_frozen(inner: &Inner, id: u32, frozen: &Arc<Frozen>) -> Result<(), StoreError> {
    let (state, catalog, storage, config, metrics) = (
        &inner.state,
        &inner.catalog,
        &inner.storage,
        &inner.config,
        &inner.metrics,
    );
    let started = Instant::now();
    let mut built = Vec::new();
    for (signal, batches) in &frozen.memtable.batches {
        let signal = *signal;
        let batches: Vec<_> = batches.iter().map(|b| b.batch.clone()).collect();
        let cfg = config.clone();
        let seg = tokio::task::spawn_blocking(move || {
            build_segment(signal, id, 0, &batches, cfg.layout(signal), &cfg.data_dir)
        })
        .await
        .map_err(|e| StoreError::Invalid {
            reason: format!("segment build task failed: {e}"),
        })??;
        if let Some(seg) = seg {
            storage.put(&seg.meta.data_path, seg.data).await?;
            storage.put(&seg.meta.index_path, seg.index).await?;
            built.push(seg.meta);
        }
    }
    let added = built.clone();
    let committed = catalog
        .commit(CatalogChange::Flush {
            shard: id,
            flushed_wal_seq: frozen.sealed_wal_seq,
            added,
            delivered: frozen.delivered.clone(),
        })
        .await?;
    {
        let mut st = state.write();
        for meta in built.iter() {
            st.add_segment(Arc::new(meta.clone()));
        }
        st.generation = st.generation.max(committed.generation);
        if let Some(mem) = st.shards.get_mut(&id) {
            mem.frozen.retain(|f| !Arc::ptr_eq(f, frozen));
            metrics.memtable_bytes.set(mem.unflushed_bytes() as i64);
        }
    }
    let dir = config.data_dir.join("wal").join(format!("shard-{id:04}"));
    let sealed = frozen.sealed_wal_seq;
    tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        for seq in wal::list(&dir)? {
            if seq <= sealed {
                let p = dir.join(wal::file_name(seq));
                std::fs::remove_file(&p)
                    .map_err(|e| StoreError::io("deleting a flushed WAL file", &p, e))?;
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| StoreError::Invalid {
        reason: format!("WAL cleanup task failed: {e}"),
    })??;
    metrics.flushes.inc();
    metrics
        .flush_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(
        shard = id,
        segments = built.len(),
        rows = frozen.memtable.rows,
        wal_seq = sealed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "flushed memtable"
    );
    Ok(())
}
