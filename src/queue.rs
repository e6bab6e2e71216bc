//! The collector's persistent queue: what a collector acknowledged but no store holds yet.
//!
//! One directory per shard under `<data-dir>/queue`; each acknowledged write to a shard is one
//! file (the WAL's record format: checksummed Arrow IPC), written and synced before the client
//! hears "ok". A drain task per shard sends the oldest file to the store node that serves the
//! shard over Flight and deletes it once the store acknowledged, so a restart of the collector
//! or an outage of a store loses nothing; order per shard is kept. The queue is bounded by
//! bytes across shards: once full, writes are refused with OTLP's retryable "overloaded".
//!
//! A store whose acknowledgement was lost gets the same batches again. Each batch travels with
//! its position in this collector's stream to the shard (the collector's producer id, kept in
//! `<queue>/producer`, and `record sequence << 16 | batch index`), and the store drops
//! positions it already holds, so a redelivered batch is stored once. Record sequence numbers
//! only grow, across restarts too: each shard queue reserves ranges of them in a `reserved`
//! file before using them, so an emptied queue never reuses a number.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oxeye_flight::FlightShardSink;
use oxeye_model::ingest::{Ingest, IngestError, Marks};
use oxeye_model::{Signal, SignalBatch};
use oxeye_store::wal;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

/// Bytes queued across every shard, against a limit.
#[derive(Debug)]
pub struct QueueBudget {
    used: AtomicU64,
    max: u64,
}

impl QueueBudget {
    pub fn new(max: u64) -> Arc<QueueBudget> {
        Arc::new(QueueBudget {
            used: AtomicU64::new(0),
            max,
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Refuses a write of about `bytes` when it would not fit.
    pub fn admit(&self, bytes: u64) -> Result<(), IngestError> {
        let used = self.used();
        if used + bytes > self.max {
            return Err(IngestError::Overloaded {
                reason: format!(
                    "the collector's queue is full ({used} of {} bytes): the store nodes are \
                     not taking writes fast enough or are unreachable",
                    self.max
                ),
                retry_after: Duration::from_secs(5),
            });
        }
        Ok(())
    }
}

/// Sequence numbers reserved at a time (one synced file write per this many records).
const SEQ_RESERVATION: u64 = 1 << 20;
/// Record sequence numbers stay below this, so positions (`seq << 16 | batch`) fit in a u64.
const MAX_SEQ: u64 = 1 << 48;

/// The sequence numbers a shard queue may use: those below `upto`, recorded in `path`.
#[derive(Debug)]
struct Reservation {
    path: PathBuf,
    upto: parking_lot::Mutex<u64>,
}

impl Reservation {
    /// Makes sure `seq` is reserved durably, extending the reservation when it is not.
    fn cover(&self, seq: u64) -> Result<(), IngestError> {
        let mut upto = self.upto.lock();
        if seq < *upto {
            return Ok(());
        }
        let next = seq + SEQ_RESERVATION;
        write_durably(&self.path, next.to_string().as_bytes())
            .map_err(|e| io_unavailable("cannot reserve sequence numbers in", &self.path, e))?;
        *upto = next;
        Ok(())
    }
}

/// The Flight sink of a shard on the store node at an address (`None`: unreachable now).
pub type SinkFactory = Arc<dyn Fn(u32, &str) -> Option<Arc<FlightShardSink>> + Send + Sync>;

/// A queued record, as the queue remembers it without reading it.
#[derive(Debug, Clone)]
struct Queued {
    seq: u64,
    size: u64,
    /// The highest delivery position of each signal in the record; `None` until read (records
    /// found at start), which then counts as not yet flushed.
    positions: Option<Vec<(Signal, u64)>>,
}

impl Queued {
    /// Whether the shard's flush checkpoint (`flushed`, this producer's positions by signal)
    /// covers every batch of the record: it is in a segment, and no replica needs it.
    fn flushed(&self, flushed: &BTreeMap<Signal, u64>) -> bool {
        self.positions.as_ref().is_some_and(|ps| {
            ps.iter()
                .all(|(signal, p)| flushed.get(signal).is_some_and(|f| p <= f))
        })
    }
}

/// The highest position of each signal among a record's batches.
fn record_positions(seq: u64, batches: &[SignalBatch]) -> Vec<(Signal, u64)> {
    let mut out: Vec<(Signal, u64)> = Vec::new();
    for (index, b) in batches.iter().enumerate() {
        let p = position(seq, index);
        match out.iter_mut().find(|(s, _)| *s == b.signal) {
            Some(e) => e.1 = e.1.max(p),
            None => out.push((b.signal, p)),
        }
    }
    out
}

/// How far one replica of the shard got.
#[derive(Debug, Clone, Copy)]
struct Replica {
    /// Every record up to this sequence number is in the replica's WAL (or was released).
    delivered: u64,
    /// Whether its last delivery worked: writes do not wait for a replica that is failing.
    healthy: bool,
}

/// How a write's wait for its replicas ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumOutcome {
    /// Enough replicas hold it.
    Met,
    /// Acknowledged on the queue's copy: too few replicas were reachable in time; the queue
    /// delivers it to the others when they are back.
    Degraded,
}

/// One shard's queue.
#[derive(Debug)]
pub struct ShardQueue {
    shard: u32,
    dir: PathBuf,
    budget: Arc<QueueBudget>,
    /// This collector's id in the stores' delivery positions.
    producer: Arc<str>,
    reservation: Arc<Reservation>,
    /// The records waiting, oldest first. A record leaves once every replica holds it or the
    /// shard's flush checkpoint covers it.
    files: parking_lot::Mutex<VecDeque<Queued>>,
    next_seq: AtomicU64,
    /// The newest sequence number queued: wakes the drains.
    newest: tokio::sync::watch::Sender<u64>,
    /// The shard's replicas (store nodes' Flight URLs) and how far each got.
    replicas: parking_lot::Mutex<BTreeMap<String, Replica>>,
    /// This producer's positions in the shard's flush checkpoint.
    flushed: parking_lot::Mutex<BTreeMap<Signal, u64>>,
    /// Bumped whenever a replica gets further or changes health: wakes writes waiting for
    /// their quorum.
    progress: tokio::sync::watch::Sender<u64>,
}

fn io_unavailable(what: &str, path: &Path, e: std::io::Error) -> IngestError {
    IngestError::Unavailable {
        reason: format!("{what} {}: {e}", path.display()),
        retry_after: Duration::from_secs(5),
    }
}

fn record_name(seq: u64) -> String {
    format!("{seq:020}.rec")
}

/// Writes `contents` to `path` durably (temporary file, sync, rename, sync the directory).
fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// This collector's producer id: made once, then read from `<root>/producer`.
pub fn producer_id(root: &Path) -> std::io::Result<Arc<str>> {
    std::fs::create_dir_all(root)?;
    let path = root.join("producer");
    match std::fs::read_to_string(&path) {
        Ok(id) => {
            let id = id.trim();
            oxeye_store::delivery::check_producer(id).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
            Ok(id.into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("c{:032x}", rand::random::<u128>());
            write_durably(&path, id.as_bytes())?;
            tracing::info!(producer = id, "this collector's producer id is new");
            Ok(id.into())
        }
        Err(e) => Err(e),
    }
}

impl ShardQueue {
    /// Opens (or creates) the queue of `shard`, adopting the files a previous run left.
    pub fn open(
        root: &Path,
        shard: u32,
        budget: Arc<QueueBudget>,
        producer: Arc<str>,
    ) -> std::io::Result<ShardQueue> {
        let dir = root.join(format!("shard-{shard:04}"));
        std::fs::create_dir_all(&dir)?;
        let mut files = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(seq) = name
                .strip_suffix(".rec")
                .and_then(|s| s.parse::<u64>().ok())
            {
                files.push((seq, e.metadata()?.len()));
            } else if name.ends_with(".tmp") {
                // A write that never completed was never acknowledged.
                let _ = std::fs::remove_file(e.path());
            }
        }
        files.sort_unstable();
        let total: u64 = files.iter().map(|f| f.1).sum();
        let files: VecDeque<Queued> = files
            .into_iter()
            .map(|(seq, size)| Queued {
                seq,
                size,
                positions: None,
            })
            .collect();
        // Numbers up to the last reservation may have been used and delivered: start above.
        let reserved_path = dir.join("reserved");
        let reserved_before = match std::fs::read_to_string(&reserved_path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", reserved_path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e),
        };
        let next = files.back().map_or(1, |f| f.seq + 1).max(reserved_before);
        let reserved = next + SEQ_RESERVATION;
        write_durably(&reserved_path, reserved.to_string().as_bytes())?;
        budget.used.fetch_add(total, Ordering::Relaxed);
        if !files.is_empty() {
            tracing::info!(
                shard,
                records = files.len(),
                bytes = total,
                "queued writes found; they will be delivered"
            );
        }
        Ok(ShardQueue {
            shard,
            dir,
            budget,
            producer,
            reservation: Arc::new(Reservation {
                path: reserved_path,
                upto: parking_lot::Mutex::new(reserved),
            }),
            files: parking_lot::Mutex::new(files),
            next_seq: AtomicU64::new(next),
            newest: tokio::sync::watch::Sender::new(next - 1),
            replicas: parking_lot::Mutex::new(BTreeMap::new()),
            flushed: parking_lot::Mutex::new(BTreeMap::new()),
            progress: tokio::sync::watch::Sender::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.files.lock().len()
    }

    /// Writes one record durably; returns its sequence number.
    async fn push(&self, batches: Vec<SignalBatch>) -> Result<u64, IngestError> {
        let payload = wal::encode_record(&batches).map_err(|e| IngestError::Rejected {
            reason: format!("cannot encode a queued write: {e}"),
        })?;
        let framed = wal::frame(&payload);
        let size = framed.len() as u64;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let positions = record_positions(seq, &batches);
        if seq >= MAX_SEQ {
            return Err(IngestError::Rejected {
                reason: format!(
                    "shard {} queue has used every sequence number; move {} aside",
                    self.shard,
                    self.dir.display()
                ),
            });
        }
        let dir = self.dir.clone();
        let reservation = self.reservation.clone();
        let write = move || -> Result<(), IngestError> {
            use std::io::Write;
            // The number must be reserved durably before a record with it is acknowledged.
            reservation.cover(seq)?;
            let tmp = dir.join(format!("{}.tmp", record_name(seq)));
            let path = dir.join(record_name(seq));
            let mut f = std::fs::File::create(&tmp)
                .map_err(|e| io_unavailable("cannot queue a write in", &tmp, e))?;
            f.write_all(&framed)
                .and_then(|_| f.sync_all())
                .map_err(|e| io_unavailable("cannot queue a write in", &tmp, e))?;
            std::fs::rename(&tmp, &path)
                .map_err(|e| io_unavailable("cannot queue a write in", &path, e))?;
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_unavailable("cannot sync", &dir, e))
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| IngestError::Unavailable {
                reason: format!("queue write task failed: {e}"),
                retry_after: Duration::from_secs(1),
            })??;
        {
            let mut files = self.files.lock();
            files.push_back(Queued {
                seq,
                size,
                positions: Some(positions),
            });
            // Sequence numbers are taken before the (concurrent) writes finish.
            files.make_contiguous().sort_unstable_by_key(|q| q.seq);
        }
        self.budget.used.fetch_add(size, Ordering::Relaxed);
        self.newest.send_modify(|n| *n = (*n).max(seq));
        Ok(seq)
    }

    /// The oldest record, read back.
    #[cfg(test)]
    fn oldest(&self) -> Option<(u64, Result<Vec<SignalBatch>, String>)> {
        let seq = self.files.lock().front()?.seq;
        Some((seq, self.read(seq)))
    }

    /// The oldest records, read back, as many as one delivery takes.
    #[cfg(test)]
    fn oldest_records(&self) -> Vec<(u64, Result<Vec<SignalBatch>, String>)> {
        self.records_after(0)
    }

    /// The oldest records after sequence number `after`, read back, as many as one delivery
    /// takes: at least one, then up to [`DELIVERY_MAX_RECORDS`] and [`DELIVERY_MAX_BYTES`].
    fn records_after(&self, after: u64) -> Vec<(u64, Result<Vec<SignalBatch>, String>)> {
        let wanted: Vec<u64> = {
            let files = self.files.lock();
            let mut bytes = 0;
            files
                .iter()
                .filter(|q| q.seq > after)
                .take(DELIVERY_MAX_RECORDS)
                .take_while(|q| {
                    let first = bytes == 0;
                    bytes += q.size;
                    first || bytes <= DELIVERY_MAX_BYTES
                })
                .map(|q| q.seq)
                .collect()
        };
        let read: Vec<_> = wanted
            .into_iter()
            .map(|seq| (seq, self.read(seq)))
            .collect();
        // Records found at start learn their positions here, for the flush checkpoint.
        let mut files = self.files.lock();
        for (seq, r) in &read {
            if let Ok(batches) = r
                && let Some(q) = files.iter_mut().find(|q| q.seq == *seq)
                && q.positions.is_none()
            {
                q.positions = Some(record_positions(*seq, batches));
            }
        }
        read
    }

    fn read(&self, seq: u64) -> Result<Vec<SignalBatch>, String> {
        let path = self.dir.join(record_name(seq));
        std::fs::read(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|bytes| {
                if bytes.len() < 8 {
                    return Err(format!("{} is truncated", path.display()));
                }
                let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                let payload = bytes.get(8..8 + len).ok_or("truncated record")?;
                if crc32fast::hash(payload) != crc {
                    return Err(format!("{} fails its checksum", path.display()));
                }
                wal::decode_record(payload)
            })
    }

    /// Forgets a delivered (or unreadable, set aside) record.
    fn remove(&self, seq: u64, keep_as: Option<&Path>) {
        let path = self.dir.join(record_name(seq));
        let size = {
            let mut files = self.files.lock();
            let pos = files.iter().position(|f| f.seq == seq);
            pos.and_then(|p| files.remove(p)).map_or(0, |f| f.size)
        };
        match keep_as {
            Some(dead) => {
                let _ = std::fs::create_dir_all(dead);
                let _ = std::fs::rename(&path, dead.join(record_name(seq)));
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        self.budget.used.fetch_sub(size, Ordering::Relaxed);
    }

    /// Sets the shard's replicas (store nodes' Flight URLs); returns the new ones, whose
    /// deliveries the caller starts ([`ShardQueue::drain_to`]). A replica that is gone stops
    /// being waited for, and its delivery ends.
    pub fn set_replicas(&self, addrs: &[String]) -> Vec<String> {
        let mut replicas = self.replicas.lock();
        replicas.retain(|a, _| addrs.contains(a));
        let added: Vec<String> = addrs
            .iter()
            .filter(|a| !replicas.contains_key(*a))
            .cloned()
            .collect();
        for a in &added {
            replicas.insert(
                a.clone(),
                Replica {
                    delivered: 0,
                    healthy: true,
                },
            );
        }
        drop(replicas);
        self.progress.send_modify(|n| *n += 1);
        self.release();
        added
    }

    /// Takes in the shard's flush checkpoint (delivery positions by `producer/table`): records
    /// it covers leave the queue, delivered to every replica or not.
    pub fn set_flushed(&self, checkpoint: &oxeye_store::delivery::Delivered) {
        let mine: BTreeMap<Signal, u64> = Signal::ALL
            .into_iter()
            .filter_map(|signal| {
                checkpoint
                    .get(&oxeye_store::delivery::key(&self.producer, signal))
                    .map(|p| (signal, *p))
            })
            .collect();
        let changed = {
            let mut flushed = self.flushed.lock();
            let changed = *flushed != mine;
            *flushed = mine;
            changed
        };
        if changed {
            self.release();
            self.progress.send_modify(|n| *n += 1);
        }
    }

    /// Deletes the records every replica holds or the flush checkpoint covers.
    fn release(&self) {
        let done: Vec<u64> = {
            let replicas = self.replicas.lock();
            let flushed = self.flushed.lock();
            let files = self.files.lock();
            files
                .iter()
                .filter(|q| {
                    (!replicas.is_empty() && replicas.values().all(|r| r.delivered >= q.seq))
                        || q.flushed(&flushed)
                })
                .map(|q| q.seq)
                .collect()
        };
        for seq in done {
            self.remove(seq, None);
        }
    }

    /// Waits until `want` replicas hold record `seq`, or until that cannot happen soon: the
    /// replicas not holding it yet are failing, or `timeout` passed. The record is in this
    /// queue either way, which delivers it once they are back.
    pub async fn wait_for_replicas(
        &self,
        seq: u64,
        want: usize,
        timeout: Duration,
    ) -> QuorumOutcome {
        let mut changes = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            let gone = !self.files.lock().iter().any(|q| q.seq == seq);
            let (held, reachable) = {
                let replicas = self.replicas.lock();
                let held = replicas.values().filter(|r| r.delivered >= seq).count();
                let reachable = replicas
                    .values()
                    .filter(|r| r.delivered < seq && r.healthy)
                    .count();
                (held, reachable)
            };
            // A record that left the queue is held by every replica or flushed.
            if held >= want || gone {
                return QuorumOutcome::Met;
            }
            if held + reachable < want {
                return QuorumOutcome::Degraded;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return QuorumOutcome::Degraded,
            }
        }
    }

    fn note_delivery(&self, addr: &str, delivered: Option<u64>, healthy: bool) {
        {
            let mut replicas = self.replicas.lock();
            let Some(r) = replicas.get_mut(addr) else {
                return;
            };
            if let Some(seq) = delivered {
                r.delivered = r.delivered.max(seq);
            }
            r.healthy = healthy;
        }
        if delivered.is_some() {
            self.release_delivered();
        }
        self.progress.send_modify(|n| *n += 1);
    }

    /// Deletes the oldest records while every replica holds them: the cheap part of
    /// [`ShardQueue::release`], run after each delivery (records the checkpoint covers go when
    /// it changes).
    fn release_delivered(&self) {
        let done: Vec<u64> = {
            let replicas = self.replicas.lock();
            let Some(floor) = replicas.values().map(|r| r.delivered).min() else {
                return;
            };
            let files = self.files.lock();
            files
                .iter()
                .take_while(|q| q.seq <= floor)
                .map(|q| q.seq)
                .collect()
        };
        for seq in done {
            self.remove(seq, None);
        }
    }

    /// Delivers records oldest first to the replica at `addr`, until `stop` or until it is no
    /// longer one of the shard's replicas.
    ///
    /// Several records go in one delivery, so the store commits what arrives together with one
    /// WAL sync instead of one per record (a store round trip and fsync per record held a
    /// collector to a quarter of the rate it accepts). Batches of one signal, across records,
    /// share one `DoPut`. After a failure the next attempt resumes after the batches the store
    /// already acknowledged, so none is written twice.
    pub async fn drain_to(
        self: Arc<Self>,
        addr: String,
        sink: SinkFactory,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(200);
        let mut progress = Progress::default();
        let mut newest = self.newest.subscribe();
        loop {
            newest.borrow_and_update();
            let Some(cursor) = self.replicas.lock().get(&addr).map(|r| r.delivered) else {
                return;
            };
            let me = self.clone();
            let records = match tokio::task::spawn_blocking(move || me.records_after(cursor)).await
            {
                Ok(records) => records,
                Err(e) => {
                    tracing::error!(shard = self.shard, error = %e, "reading queued writes failed");
                    Vec::new()
                }
            };
            let wait = match records.first() {
                None => Some(Duration::from_secs(1)),
                Some((seq, Err(e))) => {
                    let dead = self.dir.join("unreadable");
                    tracing::error!(shard = self.shard, seq, error = e, dead = %dead.display(), "a queued write cannot be read; set aside");
                    self.remove(*seq, Some(&dead));
                    None
                }
                Some(_) => match sink(self.shard, &addr) {
                    None => {
                        self.note_delivery(&addr, None, false);
                        Some(backoff)
                    }
                    Some(sink) => {
                        // Up to the first unreadable record, which is set aside once it is
                        // the oldest.
                        let readable: Vec<(u64, Vec<SignalBatch>)> = records
                            .into_iter()
                            .map_while(|(seq, r)| r.ok().map(|b| (seq, b)))
                            .collect();
                        let (failure, settled) =
                            deliver(&sink, &self.producer, &readable, progress).await;
                        progress = settled.progress;
                        let healthy = failure.is_none();
                        self.note_delivery(&addr, settled.delivered.last().copied(), healthy);
                        match failure {
                            None => {
                                backoff = Duration::from_millis(200);
                                None
                            }
                            Some(e) if e.is_retryable() => {
                                tracing::warn!(shard = self.shard, replica = addr, error = %e, retry_in_ms = backoff.as_millis() as u64, "a replica of the shard is not taking queued writes; they wait");
                                let wait = backoff;
                                backoff = (backoff * 2).min(Duration::from_secs(10));
                                Some(wait)
                            }
                            Some(e) => {
                                // The record holding the refused batch is the oldest left.
                                let seq = progress.seq;
                                let dead = self.dir.join("rejected");
                                tracing::error!(shard = self.shard, replica = addr, seq, error = %e, dead = %dead.display(), "the store rejects a queued write; set aside");
                                self.remove(seq, Some(&dead));
                                progress = Progress::default();
                                None
                            }
                        }
                    }
                },
            };
            if let Some(wait) = wait {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = newest.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            } else if stop.is_cancelled() {
                return;
            }
        }
    }
}

/// Records one delivery takes at most.
const DELIVERY_MAX_RECORDS: usize = 64;
/// Bytes (as queued) one delivery takes at most, unless a single record is larger.
const DELIVERY_MAX_BYTES: u64 = 32 << 20;

/// How far the oldest record got: its first `batches` batches are in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    seq: u64,
    batches: usize,
}

/// What a delivery settled: records entirely in the store, and how far the next one got.
#[derive(Debug, PartialEq, Eq)]
struct Settled {
    delivered: Vec<u64>,
    progress: Progress,
}

/// Sends `records` (oldest first; `progress` says how much of the first one the store already
/// holds) and reports the first failure, with what was delivered up to it.
async fn deliver(
    sink: &FlightShardSink,
    producer: &Arc<str>,
    records: &[(u64, Vec<SignalBatch>)],
    progress: Progress,
) -> (Option<oxeye_model::ingest::IngestError>, Settled) {
    let (pending, marks) = pending_batches(producer, records, progress);
    let (sent, result) = sink.put_all(&pending, Some(&marks)).await;
    let failure = result.err();
    let counts: Vec<(u64, usize)> = records.iter().map(|(s, b)| (*s, b.len())).collect();
    (failure, settle(&counts, progress, sent))
}

/// The batches of `records` the store does not hold yet (by `progress`), with their delivery
/// positions.
fn pending_batches(
    producer: &Arc<str>,
    records: &[(u64, Vec<SignalBatch>)],
    progress: Progress,
) -> (Vec<SignalBatch>, Marks) {
    let mut pending = Vec::new();
    let mut positions = Vec::new();
    for (i, (seq, batches)) in records.iter().enumerate() {
        let from = if i == 0 && progress.seq == *seq {
            progress.batches
        } else {
            0
        };
        for (index, b) in batches.iter().enumerate().skip(from) {
            pending.push(b.clone());
            positions.push(position(*seq, index));
        }
    }
    let marks = Marks {
        producer: producer.clone(),
        positions,
    };
    (pending, marks)
}

/// Where batch `index` of record `seq` stands in this collector's stream to the shard.
fn position(seq: u64, index: usize) -> u64 {
    (seq << 16) | (index as u64 & 0xffff)
}

/// Which of `records` (sequence number, batch count; oldest first) are fully in the store
/// after `sent` more batches were acknowledged, counting from `progress`.
fn settle(records: &[(u64, usize)], progress: Progress, sent: usize) -> Settled {
    let mut left = sent;
    let mut delivered = Vec::new();
    for (i, &(seq, count)) in records.iter().enumerate() {
        let done = if i == 0 && progress.seq == seq {
            progress.batches.min(count)
        } else {
            0
        };
        let remaining = count - done;
        if left >= remaining {
            left -= remaining;
            delivered.push(seq);
        } else {
            return Settled {
                delivered,
                progress: Progress {
                    seq,
                    batches: done + left,
                },
            };
        }
    }
    Settled {
        delivered,
        progress: Progress::default(),
    }
}

/// A shard's queue as the router's sink: a write is acknowledged once it is queued and, with a
/// write quorum, once enough replicas hold it.
#[derive(Debug)]
pub struct QuorumSink {
    pub queue: Arc<ShardQueue>,
    pub quorum: Quorum,
}

/// What a write waits for before it is acknowledged.
#[derive(Debug, Clone)]
pub struct Quorum {
    /// Replicas that must hold it (0: queued is enough).
    pub replicas: usize,
    pub timeout: Duration,
    /// `oxeye_collector_write_quorum_total{outcome}`.
    pub outcomes: prometheus_client::metrics::family::Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[async_trait::async_trait]
impl Ingest for QuorumSink {
    async fn ingest(&self, batches: Vec<SignalBatch>) -> Result<(), IngestError> {
        let seq = self.queue.push(batches).await?;
        if self.quorum.replicas == 0 {
            return Ok(());
        }
        let outcome = self
            .queue
            .wait_for_replicas(seq, self.quorum.replicas, self.quorum.timeout)
            .await;
        let outcome = match outcome {
            QuorumOutcome::Met => "met",
            QuorumOutcome::Degraded => "degraded",
        };
        self.quorum
            .outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        Ok(())
    }
}

/// Every shard's queue, created as shards appear.
#[derive(Debug)]
pub struct Queues {
    root: PathBuf,
    budget: Arc<QueueBudget>,
    producer: Arc<str>,
    shards: parking_lot::Mutex<BTreeMap<u32, Arc<ShardQueue>>>,
}

impl Queues {
    /// Opens the queues under `root` (creating this collector's producer id on first use).
    pub fn new(root: PathBuf, budget: Arc<QueueBudget>) -> std::io::Result<Queues> {
        let producer = producer_id(&root)?;
        Ok(Queues {
            root,
            budget,
            producer,
            shards: parking_lot::Mutex::new(BTreeMap::new()),
        })
    }

    pub fn budget(&self) -> &Arc<QueueBudget> {
        &self.budget
    }

    /// Shards with a queue directory from an earlier run.
    pub fn existing_shards(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix("shard-")
                    .and_then(|s| s.parse().ok())
            })
            .collect()
    }

    /// The queue of `shard`, if it is open.
    pub fn existing(&self, shard: u32) -> Option<Arc<ShardQueue>> {
        self.shards.lock().get(&shard).cloned()
    }

    /// The queue of `shard`, opened on first use.
    pub fn get(&self, shard: u32) -> std::io::Result<Arc<ShardQueue>> {
        let mut shards = self.shards.lock();
        if let Some(q) = shards.get(&shard) {
            return Ok(q.clone());
        }
        let q = Arc::new(ShardQueue::open(
            &self.root,
            shard,
            self.budget.clone(),
            self.producer.clone(),
        )?);
        shards.insert(shard, q.clone());
        Ok(q)
    }

    pub fn queued_records(&self) -> usize {
        self.shards.lock().values().map(|q| q.len()).sum()
    }
}

/// `oxeye_collector_queue_bytes` and `oxeye_collector_queue_records`, sampled every second.
pub fn register_metrics(
    queues: Arc<Queues>,
    registry: &mut prometheus_client::registry::Registry,
    stop: CancellationToken,
) {
    use prometheus_client::metrics::gauge::Gauge;
    let bytes = Gauge::<i64>::default();
    let records = Gauge::<i64>::default();
    registry.register(
        "oxeye_collector_queue_bytes",
        "Bytes of acknowledged writes waiting on disk for their store node",
        bytes.clone(),
    );
    registry.register(
        "oxeye_collector_queue_records",
        "Acknowledged writes waiting on disk for their store node",
        records.clone(),
    );
    tokio::spawn(async move {
        loop {
            bytes.set(queues.budget().used() as i64);
            records.set(queues.queued_records() as i64);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rows: u8) -> SignalBatch {
        oxeye_model::spans::sample_batch(rows, 1).expect("spans")
    }

    #[tokio::test]
    async fn records_survive_reopening_in_order_and_the_budget_follows_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let budget = QueueBudget::new(1 << 20);
        let q = ShardQueue::open(dir.path(), 3, budget.clone(), "c1".into()).expect("open");
        for _ in 0..3 {
            q.push(vec![batch(10)]).await.expect("push");
        }
        let used = budget.used();
        assert!(used > 0);
        drop(q);
        let budget2 = QueueBudget::new(1 << 20);
        let q = ShardQueue::open(dir.path(), 3, budget2.clone(), "c1".into()).expect("reopen");
        assert_eq!(budget2.used(), used);
        let (seq, first) = q.oldest().expect("a record");
        assert_eq!(first.expect("readable")[0].batch.num_rows(), 10);
        q.remove(seq, None);
        assert_eq!(q.len(), 2);
        assert!(budget2.used() < used);
    }

    #[tokio::test]
    async fn sequence_numbers_only_grow_across_restarts_even_when_the_queue_empties() {
        let dir = tempfile::tempdir().expect("tmp");
        let producer = producer_id(dir.path()).expect("producer");
        assert_eq!(producer_id(dir.path()).expect("again"), producer);
        let open = || {
            ShardQueue::open(dir.path(), 0, QueueBudget::new(1 << 20), producer.clone())
                .expect("open")
        };
        let mut last = 0;
        for _ in 0..3 {
            let q = open();
            q.push(vec![batch(1)]).await.expect("push");
            let (seq, _) = q.oldest().expect("a record");
            assert!(seq > last, "{seq} after {last}");
            last = seq;
            // Delivered: the queue is empty when the collector restarts.
            q.remove(seq, None);
        }
    }

    #[test]
    fn positions_follow_records_and_skip_what_the_store_holds() {
        let producer: Arc<str> = "c1".into();
        let records = vec![(7, vec![batch(1), batch(2)]), (8, vec![batch(3)])];
        let (pending, marks) =
            pending_batches(&producer, &records, Progress { seq: 7, batches: 1 });
        assert_eq!(pending.len(), 2);
        assert_eq!(marks.positions, vec![(7 << 16) | 1, 8 << 16]);
        assert!(marks.positions.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn settling_counts_acknowledged_batches_across_records() {
        let records = [(7, 3), (8, 2), (9, 4)];
        // Nothing sent: nothing delivered, the oldest keeps its progress.
        let start = Progress { seq: 7, batches: 1 };
        assert_eq!(
            settle(&records, start, 0),
            Settled {
                delivered: vec![],
                progress: Progress { seq: 7, batches: 1 }
            }
        );
        // The rest of 7 (2 batches) and 1 of 8.
        assert_eq!(
            settle(&records, start, 3),
            Settled {
                delivered: vec![7],
                progress: Progress { seq: 8, batches: 1 }
            }
        );
        // Everything.
        assert_eq!(
            settle(&records, start, 8),
            Settled {
                delivered: vec![7, 8, 9],
                progress: Progress::default()
            }
        );
        // Progress recorded for a record that is no longer the oldest is ignored.
        assert_eq!(
            settle(&records, Progress { seq: 3, batches: 2 }, 4),
            Settled {
                delivered: vec![7],
                progress: Progress { seq: 8, batches: 1 }
            }
        );
        // Records without batches settle with their neighbours.
        assert_eq!(
            settle(&[(1, 0), (2, 1), (3, 0)], Progress::default(), 1).delivered,
            vec![1, 2, 3]
        );
    }

    #[tokio::test]
    async fn one_delivery_takes_several_records_within_its_limits() {
        let dir = tempfile::tempdir().expect("tmp");
        let q =
            ShardQueue::open(dir.path(), 1, QueueBudget::new(1 << 30), "c1".into()).expect("open");
        for _ in 0..(DELIVERY_MAX_RECORDS + 5) {
            q.push(vec![batch(5)]).await.expect("push");
        }
        let taken = q.oldest_records();
        assert_eq!(taken.len(), DELIVERY_MAX_RECORDS);
        let seqs: Vec<u64> = taken.iter().map(|(s, _)| *s).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "oldest first: {seqs:?}"
        );
        assert!(taken.iter().all(|(_, r)| r.is_ok()));
    }

    #[tokio::test]
    async fn records_leave_once_every_replica_or_the_flush_checkpoint_has_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let q = Arc::new(
            ShardQueue::open(dir.path(), 2, QueueBudget::new(1 << 30), "c1".into()).expect("open"),
        );
        let replicas = ["http://a".to_string(), "http://b".to_string()];
        assert_eq!(q.set_replicas(&replicas), replicas.to_vec());
        let first = q.push(vec![batch(3)]).await.expect("push");

        // Both replicas reachable: a write waits for both, and gets there once both have it.
        let waiter = {
            let q = q.clone();
            tokio::spawn(
                async move { q.wait_for_replicas(first, 2, Duration::from_secs(30)).await },
            )
        };
        q.note_delivery("http://a", Some(first), true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "acknowledged with one replica of two"
        );
        assert_eq!(q.len(), 1, "released before b has it");
        q.note_delivery("http://b", Some(first), true);
        assert_eq!(waiter.await.expect("wait"), QuorumOutcome::Met);
        assert_eq!(q.len(), 0);

        // b fails: a write does not wait for it (its record waits in the queue for b)...
        let second = q.push(vec![batch(2)]).await.expect("push");
        q.note_delivery("http://b", None, false);
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move {
                q.wait_for_replicas(second, 2, Duration::from_secs(30))
                    .await
            })
        };
        q.note_delivery("http://a", Some(second), true);
        assert_eq!(waiter.await.expect("wait"), QuorumOutcome::Degraded);
        assert_eq!(q.len(), 1);
        // ...until the shard's flush covers it: then nobody needs it.
        let key = oxeye_store::delivery::key("c1", Signal::Spans);
        q.set_flushed(&BTreeMap::from([(key.clone(), position(second, 0) - 1)]));
        assert_eq!(q.len(), 1, "a checkpoint below the record released it");
        q.set_flushed(&BTreeMap::from([(key, position(second, 0))]));
        assert_eq!(q.len(), 0);

        // With no replica reachable, a write is acknowledged on the queue at once.
        q.note_delivery("http://a", None, false);
        let third = q.push(vec![batch(1)]).await.expect("push");
        assert_eq!(
            q.wait_for_replicas(third, 1, Duration::from_secs(30)).await,
            QuorumOutcome::Degraded
        );
    }

    #[test]
    fn a_full_budget_refuses_with_a_retryable_error() {
        let b = QueueBudget::new(100);
        assert!(b.admit(100).is_ok());
        b.used.fetch_add(60, Ordering::Relaxed);
        let e = b.admit(50).unwrap_err();
        assert!(
            e.is_retryable() && e.to_string().contains("queue is full"),
            "{e}"
        );
    }
}
