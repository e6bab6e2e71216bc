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

use std::collections::BTreeMap;
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
    /// Start leading a replicated shard: replay the WAL into memory, except the batches whose
    /// positions `flushed` (the shard's checkpoint, read under the lease) covers. Answers the
    /// rows replayed.
    Lead {
        flushed: Delivered,
        ack: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Stop leading: drop the unflushed rows from memory. The WAL keeps them, and the new
    /// leader, which has them too, flushes them.
    Follow { ack: oneshot::Sender<()> },
    /// As a follower, delete the WAL files whose every batch `flushed` covers. Answers the
    /// files deleted.
    Trim {
        flushed: Delivered,
        ack: oneshot::Sender<Result<usize, StoreError>>,
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

/// Replays a shard's WAL into `state` and starts its writer thread. A replicated shard starts
/// as a follower: its WAL is only read for the positions it holds (files the checkpoint covers
/// go), and its rows come into memory when it leads ([`WalCommand::Lead`]).
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
    // WAL sequence numbers are this node's own: another replica's flush says nothing of them.
    let flushed_wal_seq = if config.replicated {
        0
    } else {
        checkpoint.flushed_wal_seq
    };
    let mut delivered = checkpoint.delivered.clone();
    let mut next_seq = flushed_wal_seq + 1;
    let mut replayed_rows = 0usize;
    let mut file_marks = BTreeMap::new();
    for seq in wal::list(&dir)? {
        let path = dir.join(wal::file_name(seq));
        if seq <= flushed_wal_seq {
            // Its rows are already in committed segments; the flusher stopped before deleting it.
            std::fs::remove_file(&path)
                .map_err(|e| StoreError::io("deleting a flushed WAL file", &path, e))?;
            continue;
        }
        next_seq = next_seq.max(seq + 1);
        let replayed = if config.replicated {
            wal::replay_file_except(&path, &checkpoint.delivered)?
        } else {
            wal::replay_file(&path)?
        };
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
        if config.replicated {
            if replayed.batches.is_empty() {
                std::fs::remove_file(&path)
                    .map_err(|e| StoreError::io("deleting a flushed WAL file", &path, e))?;
            } else {
                file_marks.insert(seq, FileMarks::of(&replayed));
            }
            continue;
        }
        let mut st = state.write();
        let mem = st.shards.entry(id).or_default();
        for b in replayed.batches {
            replayed_rows += b.num_rows();
            mem.active.insert(b.signal, MemBatch::new(b));
        }
    }
    if replayed_rows > 0 {
        tracing::info!(shard = id, rows = replayed_rows, "replayed the WAL");
    }
    state.write().shards.entry(id).or_default();
    let file = WalFile::create(&dir, next_seq)?;
    let (tx, rx) = mpsc::channel::<WalCommand>(1024);
    let wal = ShardWal {
        id,
        dir,
        file,
        delivered,
        leading: !config.replicated,
        file_marks,
        state: state.clone(),
        metrics: metrics.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("oxeye-wal-{id}"))
        .spawn(move || wal.run(rx))
        .map_err(|e| StoreError::io("starting the WAL thread", "wal", e))?;
    Ok(ShardHandle {
        id,
        tx,
        _thread: thread,
    })
}

/// What a WAL file holds, for deciding when a follower may delete it.
#[derive(Debug, Default)]
struct FileMarks {
    /// The highest position of each producer and signal in the file.
    highest: Delivered,
    /// A batch without a position: only a flush by this node can account for it.
    unmarked: bool,
}

impl FileMarks {
    fn of(replayed: &wal::Replayed) -> FileMarks {
        FileMarks {
            highest: replayed.delivered.clone(),
            unmarked: replayed.unmarked,
        }
    }

    /// Whether every batch of the file is at or below `flushed`.
    fn covered_by(&self, flushed: &Delivered) -> bool {
        !self.unmarked
            && self
                .highest
                .iter()
                .all(|(k, p)| flushed.get(k).is_some_and(|f| p <= f))
    }
}

pub(crate) struct ShardHandle {
    pub id: u32,
    pub tx: mpsc::Sender<WalCommand>,
    /// The WAL thread ends once every sender is dropped; nothing needs to join it, since each
    /// acknowledged write was synced before its acknowledgement.
    pub _thread: std::thread::JoinHandle<()>,
}

/// The WAL writer of one shard: the one thread that orders the shard's writes.
struct ShardWal {
    id: u32,
    dir: PathBuf,
    file: WalFile,
    /// Highest delivery position held, per producer and signal.
    delivered: Delivered,
    /// Whether this node keeps the shard's rows in memory (and flushes them).
    leading: bool,
    /// What each WAL file holds, by sequence number (the current file included).
    file_marks: BTreeMap<u64, FileMarks>,
    state: Arc<RwLock<ReadState>>,
    metrics: StoreMetrics,
}

impl ShardWal {
    fn run(mut self, mut rx: mpsc::Receiver<WalCommand>) {
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
                    let _ = ack.send(self.seal());
                }
                WalCommand::Lead { flushed, ack } => {
                    let _ = ack.send(self.lead(&flushed));
                }
                WalCommand::Follow { ack } => {
                    self.follow();
                    let _ = ack.send(());
                }
                WalCommand::Trim { flushed, ack } => {
                    let _ = ack.send(self.trim(&flushed));
                }
                append @ WalCommand::Append { .. } => {
                    let mut group = vec![append];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(c @ WalCommand::Append { .. }) => group.push(c),
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.append_group(group);
                }
            }
        }
        tracing::debug!(shard = self.id, "WAL thread stopped");
    }

    fn append_group(&mut self, mut group: Vec<WalCommand>) {
        let (id, metrics) = (self.id, &self.metrics);
        let started = Instant::now();
        // Redelivered batches are dropped here, on the one thread that orders the shard's
        // writes, so two deliveries of one batch cannot both pass the check.
        let mut held = Delivered::new();
        let mut unmarked = false;
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
            unmarked |= marks.is_none() && !batches.is_empty();
            match drop_duplicates(
                &self.delivered,
                &mut held,
                &mut framed,
                &mut batches,
                &marks,
            ) {
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
            let r = self.file.append_durably(&framed);
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
                    let marks = self.file_marks.entry(self.file.seq).or_default();
                    delivery::merge(&mut marks.highest, &held);
                    marks.unmarked |= unmarked;
                }
                delivery::merge(&mut self.delivered, &held);
                let mut acks = Vec::with_capacity(group.len());
                {
                    let mut st = self.state.write();
                    let mem = st.shards.entry(id).or_default();
                    for (c, w) in group.into_iter().zip(&written) {
                        if let WalCommand::Append { batches, ack, .. } = c {
                            // A follower's rows live in its WAL only, until it leads.
                            if self.leading {
                                for b in batches {
                                    mem.active.insert(b.signal, b.batch);
                                }
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
                            StoreError::Overloaded(format!("the WAL disk is full: {message}"))
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

    /// Starts a new WAL file when the current one holds records; returns the sequence number
    /// of the last closed file.
    fn rotate(&mut self) -> Result<u64, StoreError> {
        if self.file.is_empty() {
            return Ok(self.file.seq - 1);
        }
        let sealed = self.file.seq;
        self.file = WalFile::create(&self.dir, sealed + 1)?;
        // The flusher deletes the files it flushed; forget them here too.
        let dir = &self.dir;
        self.file_marks
            .retain(|seq, _| *seq > sealed || dir.join(wal::file_name(*seq)).exists());
        Ok(sealed)
    }

    fn seal(&mut self) -> Result<Option<u64>, StoreError> {
        {
            let st = self.state.read();
            if st.shards.get(&self.id).is_none_or(|m| m.active.is_empty()) {
                return Ok(None);
            }
        }
        let sealed = self.rotate()?;
        let mut st = self.state.write();
        let mem = st.shards.entry(self.id).or_default();
        let memtable = std::mem::take(&mut mem.active);
        mem.frozen.push(Arc::new(Frozen {
            memtable,
            sealed_wal_seq: sealed,
            delivered: self.delivered.clone(),
        }));
        Ok(Some(sealed))
    }

    fn lead(&mut self, flushed: &Delivered) -> Result<usize, StoreError> {
        if self.leading {
            return Ok(0);
        }
        let last = self.rotate()?;
        delivery::merge(&mut self.delivered, flushed);
        let mut rows = 0;
        let mut batches = Vec::new();
        for seq in wal::list(&self.dir)?.into_iter().filter(|s| *s <= last) {
            let path = self.dir.join(wal::file_name(seq));
            let replayed = wal::replay_file_except(&path, flushed)?;
            if replayed.batches.is_empty() {
                std::fs::remove_file(&path)
                    .map_err(|e| StoreError::io("deleting a flushed WAL file", &path, e))?;
                self.file_marks.remove(&seq);
                continue;
            }
            rows += replayed.batches.iter().map(|b| b.num_rows()).sum::<usize>();
            batches.extend(replayed.batches);
        }
        let mut st = self.state.write();
        let mem = st.shards.entry(self.id).or_default();
        for b in batches {
            mem.active.insert(b.signal, MemBatch::new(b));
        }
        self.metrics
            .memtable_bytes
            .set(mem.unflushed_bytes() as i64);
        self.leading = true;
        tracing::info!(
            shard = self.id,
            rows,
            "leading the shard: replayed its WAL past the last flush"
        );
        Ok(rows)
    }

    fn follow(&mut self) {
        if !self.leading {
            return;
        }
        self.leading = false;
        let mut st = self.state.write();
        if let Some(mem) = st.shards.get_mut(&self.id) {
            *mem = Default::default();
        }
        tracing::warn!(
            shard = self.id,
            "no longer leading the shard: its unflushed rows stay in the WAL only"
        );
    }

    fn trim(&mut self, flushed: &Delivered) -> Result<usize, StoreError> {
        if self.leading {
            return Ok(0);
        }
        // Batches the leader already flushed are dropped when they come again.
        delivery::merge(&mut self.delivered, flushed);
        let last = self.rotate()?;
        let covered: Vec<u64> = self
            .file_marks
            .iter()
            .filter(|(seq, marks)| **seq <= last && marks.covered_by(flushed))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &covered {
            let path = self.dir.join(wal::file_name(*seq));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("deleting a flushed WAL file", &path, e)),
            }
            self.file_marks.remove(seq);
        }
        self.metrics.wal_files_trimmed.inc_by(covered.len() as u64);
        Ok(covered.len())
    }
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
        if self.config.replicated && marks.is_none() {
            // Replicas and the flush checkpoint agree on rows by their delivery positions.
            return Err(StoreError::Invalid {
                reason: format!(
                    "shard {} is replicated: it takes collectors' deliveries (with positions) only",
                    self.id
                ),
            });
        }
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
            flushed_wal_seq: if config.replicated {
                0
            } else {
                frozen.sealed_wal_seq
            },
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
