//! Background work: flushing memtables, merging small segments, dropping expired ones, deleting
//! removed segments once no query holds them, and guarding free disk space.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use oxeye_model::Signal;
use tracing::Instrument;

use crate::catalog::CatalogChange;
use crate::scan::{ScanPart, ScanRequest};
use crate::segment::{SegmentRef, build_segment, now_unix_ms, now_unix_nanos};
use crate::shard::WalCommand;
use crate::{Inner, Store, StoreError};

/// How often shards are checked for a due flush.
const FLUSH_CHECK: Duration = Duration::from_millis(200);
/// How often free disk space is measured.
const DISK_CHECK: Duration = Duration::from_secs(1);
/// Objects under `segments/` that the catalog does not name are deleted once this old (a flush
/// that crashed between upload and commit leaves them behind).
const ORPHAN_AGE: Duration = Duration::from_secs(3600);
/// Rough size of Arrow rows relative to their Parquet bytes, to bound a merge's memory.
const PARQUET_TO_ARROW: u64 = 12;
/// Most Arrow bytes one merge may hold in memory.
const MERGE_MEMORY: u64 = 768 * 1024 * 1024;

pub(crate) fn start(inner: &Arc<Inner>) {
    let mut tasks = inner.tasks.lock();
    for shard in &inner.shards {
        let id = shard.id;
        let weak = Arc::downgrade(inner);
        let stop = inner.shutdown.clone();
        let wake = inner.flush_now.get(&id).cloned().unwrap_or_default();
        tasks.push(tokio::spawn(async move {
            let mut backoff = FLUSH_CHECK;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                    _ = wake.notified() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let (due, retry) = flush_due(&inner, id);
                if !due && !retry {
                    backoff = FLUSH_CHECK;
                    continue;
                }
                match flush_shard(&inner, id, due).await {
                    Ok(()) => backoff = FLUSH_CHECK,
                    Err(e) => {
                        inner.metrics.flush_failures.inc();
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        tracing::warn!(shard = id, error = %e, retry_in_ms = backoff.as_millis() as u64,
                            "flush failed; rows stay in the WAL and memory and the flush is retried");
                    }
                }
            }
        }));
    }
    let weak = Arc::downgrade(inner);
    let stop = inner.shutdown.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let Some(inner) = weak.upgrade() else { return };
            check_disk(&inner).await;
            drop(inner);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(DISK_CHECK) => {}
            }
        }
    }));
    if inner.catalog.shared() {
        let weak = Arc::downgrade(inner);
        let stop = inner.shutdown.clone();
        let every = inner.config.catalog_refresh;
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = refresh_catalog(&inner).await {
                    tracing::warn!(error = %e, "cannot read the shared catalog; queries see what this node knew");
                }
            }
        }));
    }
    let weak = Arc::downgrade(inner);
    let stop = inner.shutdown.clone();
    let interval = inner.config.maintenance_interval;
    tasks.push(tokio::spawn(async move {
        let mut last_orphan_check: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let Some(inner) = weak.upgrade() else { return };
            if let Err(e) = retention(&inner).await {
                tracing::warn!(error = %e, "retention pass failed");
            }
            match compact_once(&inner).await {
                Ok(_) => {}
                Err(e) => {
                    inner.metrics.compaction_failures.inc();
                    tracing::warn!(error = %e, "compaction failed; the inputs stay as they are");
                }
            }
            if let Err(e) = delete_pending(&inner, false).await {
                tracing::warn!(error = %e, "deleting removed segments failed; will retry");
            }
            // A node without shards owns no objects, so it deletes none.
            if !inner.shards.is_empty()
                && last_orphan_check.is_none_or(|t| t.elapsed() > ORPHAN_AGE / 4)
            {
                last_orphan_check = Some(Instant::now());
                if let Err(e) = delete_orphans(&inner).await {
                    tracing::warn!(error = %e, "orphan cleanup failed");
                }
            }
            Store::update_segment_gauges(&inner);
        }
    }));
}

/// (a flush is due now, a failed flush is waiting to be retried)
fn flush_due(inner: &Inner, id: u32) -> (bool, bool) {
    let st = inner.state.read();
    let Some(m) = st.shards.get(&id) else {
        return (false, false);
    };
    // Flushing at half the unflushed limit keeps writes flowing even when the limit is set
    // below the flush size.
    let due = !m.active.is_empty()
        && (m.active.bytes >= inner.config.flush_bytes
            || m.unflushed_bytes() >= inner.config.max_unflushed_bytes / 2
            || m.active
                .first_at
                .is_some_and(|t| t.elapsed() >= inner.config.flush_age)
            || inner.shutdown.is_cancelled());
    (due, !m.frozen.is_empty())
}

pub(crate) async fn flush_shard(inner: &Inner, id: u32, seal: bool) -> Result<(), StoreError> {
    let Some(lock) = inner.flush_locks.get(&id) else {
        return Err(StoreError::Invalid {
            reason: format!("no shard {id} in this store"),
        });
    };
    let _guard = lock.lock().await;
    let Some(handle) = inner.shards.iter().find(|s| s.id == id) else {
        return Ok(());
    };
    crate::shard::flush_shard(inner, id, &handle.tx, seal).await?;
    Store::update_segment_gauges(inner);
    Ok(())
}

async fn check_disk(inner: &Inner) {
    let dir = inner.config.data_dir.clone();
    let available = tokio::task::spawn_blocking(move || fs4::available_space(&dir)).await;
    match available {
        Ok(Ok(bytes)) => {
            inner.metrics.disk_available_bytes.set(bytes as i64);
            let ok = bytes >= inner.config.min_free_disk_bytes;
            let was = inner.disk_ok.swap(ok, Ordering::Relaxed);
            if was && !ok {
                inner.metrics.writes_refused_disk.inc();
                tracing::warn!(
                    available = bytes,
                    required = inner.config.min_free_disk_bytes,
                    "disk nearly full: refusing new writes with a retryable error until space returns"
                );
            } else if !was && ok {
                tracing::info!(available = bytes, "disk space is back: accepting writes");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot measure free disk space"),
        Err(e) => tracing::warn!(error = %e, "disk check task failed"),
    }
}

/// Picks the next group of small segments to merge: same signal and shard, adjacent in time.
pub(crate) fn pick_merge(
    segments: &[SegmentRef],
    target_rows: u64,
    max_inputs: usize,
) -> Vec<SegmentRef> {
    let mut by_shard: std::collections::BTreeMap<u32, Vec<SegmentRef>> = Default::default();
    for s in segments.iter().filter(|s| s.rows < target_rows) {
        by_shard.entry(s.shard).or_default().push(s.clone());
    }
    for (_, mut small) in by_shard {
        if small.len() < 2 {
            continue;
        }
        small.sort_by_key(|s| (s.min_time, s.id.clone()));
        let mut group: Vec<SegmentRef> = Vec::new();
        let (mut rows, mut memory) = (0u64, 0u64);
        for s in small {
            let m = s.data_bytes * PARQUET_TO_ARROW;
            if !group.is_empty()
                && (rows + s.rows > target_rows * 2
                    || memory + m > MERGE_MEMORY
                    || group.len() >= max_inputs)
            {
                break;
            }
            rows += s.rows;
            memory += m;
            group.push(s);
        }
        if group.len() >= 2 {
            return group;
        }
    }
    Vec::new()
}

/// Merges one group of small segments, if there is one. Returns whether it merged.
pub(crate) async fn compact_once(inner: &Inner) -> Result<bool, StoreError> {
    let _guard = inner.maintenance_lock.lock().await;
    for signal in Signal::ALL {
        // Each node merges its own shards' segments only: two nodes never race for the same.
        let segments: Vec<SegmentRef> = inner
            .state
            .read()
            .segments
            .get(&signal)
            .map(|v| v.iter().filter(|s| inner.leads(s.shard)).cloned().collect())
            .unwrap_or_default();
        let group = pick_merge(
            &segments,
            inner.config.compaction_target_rows,
            inner.config.compaction_max_inputs,
        );
        if group.is_empty() {
            continue;
        }
        let span = tracing::info_span!(
            "store.compact",
            table = signal.table_name(),
            inputs = group.len() as u64,
            shard = group[0].shard,
            error = tracing::field::Empty,
        );
        let merged = merge(inner, signal, group).instrument(span.clone()).await;
        if let Err(e) = &merged {
            span.record("error", e.to_string());
        }
        merged?;
        return Ok(true);
    }
    Ok(false)
}

async fn merge(inner: &Inner, signal: Signal, inputs: Vec<SegmentRef>) -> Result<(), StoreError> {
    let started = Instant::now();
    let request = ScanRequest::all(signal);
    let mut batches = Vec::new();
    for meta in &inputs {
        let part = ScanPart::Segment {
            meta: meta.clone(),
            granules: None,
            row_groups: None,
        };
        let stream = crate::scan::read_part(
            &part,
            &request,
            None,
            64 * 1024,
            &inner.storage,
            &inner.caches,
            &inner.metrics,
        )
        .await?;
        let mut got: Vec<_> = stream.try_collect().await?;
        batches.append(&mut got);
    }
    let level = inputs.iter().map(|s| s.level).max().unwrap_or(0) + 1;
    let shard = inputs[0].shard;
    let cfg = inner.config.clone();
    let built = tokio::task::spawn_blocking(move || {
        build_segment(
            signal,
            shard,
            level,
            &batches,
            cfg.layout(signal),
            &cfg.data_dir,
        )
    })
    .await
    .map_err(|e| StoreError::Invalid {
        reason: format!("merge task failed: {e}"),
    })??;
    let removed: Vec<String> = inputs.iter().map(|s| s.id.clone()).collect();
    let Some(seg) = built else {
        // Inputs held no rows: just drop them.
        let committed = inner
            .catalog
            .commit(CatalogChange::Remove {
                removed: removed.clone(),
            })
            .await?;
        swap_segments(inner, signal, &removed, None, committed.generation);
        return Ok(());
    };
    let expected: u64 = inputs.iter().map(|s| s.rows).sum();
    if seg.meta.rows != expected {
        return Err(StoreError::Invalid {
            reason: format!(
                "merge produced {} rows from {expected}; not committing",
                seg.meta.rows
            ),
        });
    }
    inner.storage.put(&seg.meta.data_path, seg.data).await?;
    inner.storage.put(&seg.meta.index_path, seg.index).await?;
    let meta = seg.meta;
    let committed = match inner
        .catalog
        .commit(CatalogChange::Replace {
            removed: removed.clone(),
            added: vec![meta.clone()],
        })
        .await
    {
        Ok(c) => c,
        Err(e) => {
            // Lost a race (retention removed an input): discard our output, keep the catalog.
            let _ = inner.storage.delete(&meta.data_path).await;
            let _ = inner.storage.delete(&meta.index_path).await;
            return Err(e);
        }
    };
    let rows = meta.rows;
    swap_segments(inner, signal, &removed, Some(meta), committed.generation);
    inner.metrics.compactions.inc();
    inner
        .metrics
        .compaction_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(%signal, inputs = removed.len(), rows, level, elapsed_ms = started.elapsed().as_millis() as u64, "merged segments");
    Ok(())
}

/// Replaces segments in the read state (one lock) and queues the removed ones for deletion.
fn swap_segments(
    inner: &Inner,
    signal: Signal,
    removed: &[String],
    added: Option<crate::SegmentMeta>,
    generation: u64,
) {
    let mut gone = Vec::new();
    {
        let mut st = inner.state.write();
        let list = st.segments.entry(signal).or_default();
        list.retain(|s| {
            if removed.contains(&s.id) {
                gone.push(s.clone());
                false
            } else {
                true
            }
        });
        if let Some(a) = added {
            st.add_segment(Arc::new(a));
        }
        st.generation = st.generation.max(generation);
    }
    let now = Instant::now();
    inner
        .pending_deletes
        .lock()
        .extend(gone.into_iter().map(|s| (s, now)));
}

/// Takes in what other nodes committed to a shared catalog: their new segments become visible,
/// the ones they merged or expired go (their objects are theirs to delete). A refresh older than
/// this node's own last commit is ignored.
pub(crate) async fn refresh_catalog(inner: &Inner) -> Result<bool, StoreError> {
    let loaded = inner.catalog.load().await?;
    {
        let mut st = inner.state.write();
        if loaded.generation <= st.generation {
            return Ok(false);
        }
        let mut known: std::collections::HashMap<String, SegmentRef> =
            std::mem::take(&mut st.segments)
                .into_values()
                .flatten()
                .map(|s| (s.id.clone(), s))
                .collect();
        for meta in loaded.segments {
            // Keep the same `Arc` for a segment already known: caches and running scans hold it.
            let seg = known.remove(&meta.id).unwrap_or_else(|| Arc::new(meta));
            st.add_segment(seg);
        }
        st.generation = loaded.generation;
    }
    Store::update_segment_gauges(inner);
    trim_followed(inner, &loaded.shards).await;
    Ok(true)
}

/// Deletes, on the shards this node follows, the WAL files the leaders' flushes now cover.
async fn trim_followed(
    inner: &Inner,
    checkpoints: &BTreeMap<u32, crate::catalog::ShardCheckpoint>,
) {
    if !inner.config.replicated {
        return;
    }
    for handle in &inner.shards {
        let Some(checkpoint) = checkpoints.get(&handle.id) else {
            continue;
        };
        if inner.leads(handle.id) {
            continue;
        }
        let (ack, done) = tokio::sync::oneshot::channel();
        let command = WalCommand::Trim {
            flushed: checkpoint.delivered.clone(),
            ack,
        };
        if handle.tx.send(command).await.is_err() {
            return;
        }
        match done.await {
            Ok(Ok(files)) if files > 0 => {
                tracing::debug!(
                    shard = handle.id,
                    files,
                    "deleted WAL files the leader flushed"
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(shard = handle.id, error = %e, "cannot delete WAL files the leader flushed; will retry")
            }
            _ => {}
        }
    }
}

/// Drops segments whose newest row is older than their signal's retention.
pub(crate) async fn retention(inner: &Inner) -> Result<usize, StoreError> {
    let _guard = inner.maintenance_lock.lock().await;
    let now = now_unix_nanos();
    let mut dropped = 0;
    for (signal, keep) in &inner.config.retention {
        let cutoff = now.saturating_sub(keep.as_nanos().min(i64::MAX as u128) as i64);
        let expired: Vec<String> = inner
            .state
            .read()
            .segments
            .get(signal)
            .map(|v| {
                v.iter()
                    .filter(|s| s.max_time < cutoff && inner.leads(s.shard))
                    .map(|s| s.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        if expired.is_empty() {
            continue;
        }
        let committed = inner
            .catalog
            .commit(CatalogChange::Remove {
                removed: expired.clone(),
            })
            .await?;
        swap_segments(inner, *signal, &expired, None, committed.generation);
        dropped += expired.len();
        inner
            .metrics
            .retention_deleted_segments
            .inc_by(expired.len() as u64);
        tracing::info!(%signal, segments = expired.len(), "dropped expired segments");
    }
    Ok(dropped)
}

/// Deletes objects of removed segments that no query references any more.
pub(crate) async fn delete_pending(inner: &Inner, ignore_grace: bool) -> Result<usize, StoreError> {
    let ready: Vec<SegmentRef> = {
        let mut pending = inner.pending_deletes.lock();
        let grace = inner.config.deletion_grace;
        let (ready, keep): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(s, at)| {
            Arc::strong_count(s) == 1 && (ignore_grace || at.elapsed() >= grace)
        });
        *pending = keep;
        ready.into_iter().map(|(s, _)| s).collect()
    };
    let n = ready.len();
    for s in ready {
        inner.caches.evict(&s.id);
        if let Err(e) = async {
            inner.storage.delete(&s.data_path).await?;
            inner.storage.delete(&s.index_path).await
        }
        .await
        {
            inner.pending_deletes.lock().push((s, Instant::now()));
            return Err(e);
        }
    }
    Ok(n)
}

/// Deletes segment objects that no catalog entry names and that are old enough not to be an
/// upload in progress.
async fn delete_orphans(inner: &Inner) -> Result<usize, StoreError> {
    // Other nodes sharing the catalog and the bucket commit segments this node has not seen:
    // those are in use too.
    let shared: Vec<String> = if inner.catalog.shared() {
        inner
            .catalog
            .load()
            .await?
            .segments
            .into_iter()
            .flat_map(|s| [s.data_path, s.index_path])
            .collect()
    } else {
        Vec::new()
    };
    let known: std::collections::HashSet<String> = {
        let st = inner.state.read();
        st.segments
            .values()
            .flat_map(|v| v.iter())
            .flat_map(|s| [s.data_path.clone(), s.index_path.clone()])
            .chain(
                inner
                    .pending_deletes
                    .lock()
                    .iter()
                    .flat_map(|(s, _)| [s.data_path.clone(), s.index_path.clone()]),
            )
            .chain(shared)
            .collect()
    };
    let cutoff = now_unix_ms() as i64 - ORPHAN_AGE.as_millis() as i64;
    let mut deleted = 0;
    for (path, modified) in inner.storage.list("segments").await? {
        if !known.contains(&path) && modified < cutoff {
            inner.storage.delete(&path).await?;
            deleted += 1;
        }
    }
    if deleted > 0 {
        tracing::info!(objects = deleted, "deleted orphaned segment objects");
    }
    Ok(deleted)
}
