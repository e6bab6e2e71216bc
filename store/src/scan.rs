//! The read API for the query layer: plan a scan of one signal over committed segments and
//! unflushed memory, pruned by time range (segment bounds and row-group statistics) and by the
//! segment indexes, then read each part as a stream of record batches.
//!
//! Index predicates prune; they do not filter exactly (a granule is a union of rows). Callers
//! that need exact answers apply their filters to what comes back, as the query layer does.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::BooleanArray;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use oxeye_model::Signal;
use parking_lot::Mutex;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, RowFilter, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::statistics::Statistics;

use crate::StoreError;
use crate::index::{IndexPredicate, SegmentIndex};
use crate::segment::SegmentRef;
use crate::storage::{ObjectFileReader, Storage};

/// What to scan.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub signal: Signal,
    /// Inclusive lower bound of the time column (ns since the epoch).
    pub start: Option<i64>,
    /// Exclusive upper bound of the time column.
    pub end: Option<i64>,
    /// Granule-level pruning through the segment indexes.
    pub index: Option<IndexPredicate>,
    /// Exact row filters, applied in order while reading: a stage sees only the rows the
    /// stages before it kept, and the other columns are decoded only for rows every stage kept.
    pub filter: Vec<RowFilterStage>,
    /// How many parts a big segment may be split into, so that many readers share it.
    pub parallelism: usize,
    /// Return top-level attribute maps with dictionary-encoded values
    /// ([`oxeye_model::schema::attributes_read_type`]), as SQL shows them. Row filters see
    /// segment rows this way and memory rows as stored, so they must accept both.
    pub attribute_values_as_dictionary: bool,
    /// The storage columns the reader projects, when it says: store nodes' snapshots then carry
    /// only these and the filter stages' columns instead of whole rows.
    pub columns: Option<Vec<usize>>,
    /// At most this many rows are wanted, whatever they are (a `LIMIT` with no filter): each
    /// store node's snapshot sends no more unflushed rows than that.
    pub limit: Option<usize>,
}

impl ScanRequest {
    pub fn all(signal: Signal) -> ScanRequest {
        ScanRequest {
            signal,
            start: None,
            end: None,
            index: None,
            filter: Vec::new(),
            parallelism: 1,
            attribute_values_as_dictionary: false,
            columns: None,
            limit: None,
        }
    }

    /// Names of the storage columns a read of this request touches (the projection and every
    /// filter stage's columns), or `None` for all of them.
    pub fn column_names(&self) -> Option<Vec<String>> {
        let projected = self.columns.as_ref()?;
        let storage = self.signal.schema();
        let mut wanted: Vec<usize> = projected
            .iter()
            .chain(self.filter.iter().flat_map(|stage| stage.columns.iter()))
            .copied()
            .filter(|i| *i < storage.fields().len())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        Some(
            wanted
                .into_iter()
                .map(|i| storage.field(i).name().clone())
                .collect(),
        )
    }
}

/// Decides, for a batch of some storage columns, which rows to keep.
pub type RowPredicate = Arc<dyn Fn(&RecordBatch) -> Result<BooleanArray, ArrowError> + Send + Sync>;

/// One exact filter on storage rows (see [`ScanRequest::filter`]).
#[derive(Clone)]
pub struct RowFilterStage {
    /// What the stage tests, for EXPLAIN and logs.
    pub description: String,
    /// Storage-schema columns the stage reads, ascending: its batches hold exactly these.
    pub columns: Vec<usize>,
    pub keep: RowPredicate,
    /// The stage as text that the store nodes can rebuild it from (see
    /// [`crate::remote::RowFilterCompiler`]), so their snapshots leave out rows it rejects;
    /// `None` when the stage cannot travel.
    pub wire: Option<String>,
    /// An index predicate that, searched in a row-level index (one row per granule), finds
    /// exactly the rows this stage keeps: a segment read whose rows came from that search
    /// need not evaluate the stage (see [`IndexPredicate::exact_per_row`]).
    pub exact_index: Option<IndexPredicate>,
    /// The reader relies on this stage: its filter is not applied again above the scan, so
    /// every read must apply it (or select exactly its rows through the index).
    pub relied_on: bool,
}

impl std::fmt::Debug for RowFilterStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// Rows of a scan part at least this many are worth a reader of their own.
const MIN_ROWS_PER_PART: usize = 64 * 1024;

/// One independently readable piece of a scan.
#[derive(Debug, Clone)]
pub enum ScanPart {
    /// A committed segment; `granules` limits the read to those granules when an index
    /// answered, `row_groups` to a range of its row groups (a big segment is read in several
    /// parts, in parallel).
    Segment {
        meta: SegmentRef,
        granules: Option<Arc<Vec<u32>>>,
        row_groups: Option<std::ops::Range<usize>>,
    },
    /// Unflushed rows.
    Memory { batches: Vec<RecordBatch> },
    /// Unflushed rows a store node set aside for this scan (on a query node).
    Remote(crate::remote::PinnedRows),
}

impl ScanPart {
    /// Most rows this part yields (before row filters): an upper bound the query planner
    /// uses to tell small reads, which gain nothing from being spread over threads, from big
    /// ones.
    pub fn max_rows(&self) -> u64 {
        match self {
            ScanPart::Memory { batches } => batches.iter().map(|b| b.num_rows() as u64).sum(),
            ScanPart::Remote(pinned) => pinned.rows,
            ScanPart::Segment { meta, granules, .. } => match granules {
                Some(g) => (g.len() as u64 * u64::from(meta.granule_rows)).min(meta.rows),
                // A range of row groups: their sizes are in the footer, not here.
                None => meta.rows,
            },
        }
    }
}

/// Counts that explain what pruning did (shown by EXPLAIN ANALYZE and the benchmarks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanStats {
    pub segments_total: usize,
    pub segments_pruned_by_time: usize,
    pub segments_pruned_by_index: usize,
    pub granules_selected: u64,
    pub memory_batches: usize,
    /// Unflushed rows that came from store nodes' snapshots (on a query node), after the
    /// filters, trace id and limit they applied.
    pub snapshot_rows: u64,
    /// Unflushed rows store nodes set aside for the scan to read when it runs, before filters.
    pub pinned_rows: u64,
}

#[derive(Debug, Clone)]
pub struct ScanPlan {
    pub request: ScanRequest,
    pub parts: Vec<ScanPart>,
    pub stats: ScanStats,
}

/// Opened indexes and Parquet footers of segments, bounded by bytes and entries.
pub(crate) struct Caches {
    indexes: Mutex<HashMap<String, Arc<SegmentIndex>>>,
    index_bytes: Mutex<usize>,
    index_budget: usize,
    footers: Mutex<HashMap<String, Footer>>,
    footer_budget: usize,
}

/// A segment's Parquet metadata, as stored and with the read hint that yields attribute map
/// values as dictionaries (derived once, since queries ask for it on every read).
#[derive(Clone)]
pub(crate) struct Footer {
    pub stored: ArrowReaderMetadata,
    /// `None` when the file's schema does not take the hint; reads asking for it then fail
    /// with a message naming the segment.
    pub dictionary_values: Option<ArrowReaderMetadata>,
}

impl Caches {
    pub fn new(index_budget: usize, footer_budget: usize) -> Caches {
        Caches {
            indexes: Mutex::new(HashMap::new()),
            index_bytes: Mutex::new(0),
            index_budget,
            footers: Mutex::new(HashMap::new()),
            footer_budget,
        }
    }

    pub fn evict(&self, segment_id: &str) {
        if let Some(ix) = self.indexes.lock().remove(segment_id) {
            *self.index_bytes.lock() -= ix.bytes;
        }
        self.footers.lock().remove(segment_id);
    }

    pub fn index_bytes(&self) -> usize {
        *self.index_bytes.lock()
    }

    pub async fn index(
        &self,
        storage: &Storage,
        meta: &SegmentRef,
    ) -> Result<Arc<SegmentIndex>, StoreError> {
        if let Some(ix) = self.indexes.lock().get(&meta.id) {
            return Ok(ix.clone());
        }
        let bytes = storage.get(&meta.index_path).await?;
        let ix = tokio::task::spawn_blocking(move || SegmentIndex::open(bytes.to_vec()))
            .await
            .map_err(|e| StoreError::index("opening an index", e))??;
        let ix = Arc::new(ix);
        let mut map = self.indexes.lock();
        let mut total = self.index_bytes.lock();
        // Evict arbitrary entries until the new one fits (indexes are cheap to reopen).
        while *total + ix.bytes > self.index_budget && !map.is_empty() {
            let Some(victim) = map.keys().next().cloned() else {
                break;
            };
            if let Some(v) = map.remove(&victim) {
                *total -= v.bytes;
            }
        }
        *total += ix.bytes;
        map.insert(meta.id.clone(), ix.clone());
        Ok(ix)
    }

    pub async fn footer(&self, storage: &Storage, meta: &SegmentRef) -> Result<Footer, StoreError> {
        if let Some(m) = self.footers.lock().get(&meta.id) {
            return Ok(m.clone());
        }
        let mut reader = ObjectFileReader::new(storage, &meta.data_path, meta.data_bytes);
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let stored = ArrowReaderMetadata::load_async(&mut reader, options)
            .await
            .map_err(|e| {
                StoreError::parquet(format!("reading the footer of segment {}", meta.id), e)
            })?;
        // The hint is derived from the file's own schema, so it fits the file.
        let hint = oxeye_model::schema::read_schema(stored.schema());
        let dictionary_values = ArrowReaderMetadata::try_new(
            stored.metadata().clone(),
            ArrowReaderOptions::new().with_schema(hint),
        )
        .inspect_err(|e| {
            tracing::warn!(segment = %meta.id, error = %e, "segment cannot be read with dictionary attribute values")
        })
        .ok();
        let footer = Footer {
            stored,
            dictionary_values,
        };
        let mut map = self.footers.lock();
        if map.len() >= self.footer_budget
            && let Some(victim) = map.keys().next().cloned()
        {
            map.remove(&victim);
        }
        map.insert(meta.id.clone(), footer.clone());
        Ok(footer)
    }
}

/// Row groups worth reading (within `only`, when given) and the selection within them.
fn plan_row_groups(
    footer: &ArrowReaderMetadata,
    time_column: &str,
    start: Option<i64>,
    end: Option<i64>,
    granules: Option<&[u32]>,
    granule_rows: usize,
    only: Option<&std::ops::Range<usize>>,
) -> (Vec<usize>, RowSelection) {
    let md = footer.metadata();
    let schema = md.file_metadata().schema_descr();
    let time_idx = schema
        .columns()
        .iter()
        .position(|c| c.path().string() == time_column);
    let mut groups = Vec::new();
    let mut selectors: Vec<RowSelector> = Vec::new();
    let mut first_row = 0usize;
    let mut next_granule = 0usize;
    for (i, rg) in md.row_groups().iter().enumerate() {
        let rows = rg.num_rows() as usize;
        let last_row = first_row + rows;
        let in_range = only.is_none_or(|r| r.contains(&i));
        let in_time = in_range
            && match (
                time_idx.and_then(|c| rg.column(c).statistics()),
                start.is_some() || end.is_some(),
            ) {
                (Some(Statistics::Int64(s)), true) => match (s.min_opt(), s.max_opt()) {
                    (Some(min), Some(max)) => {
                        start.is_none_or(|st| *max >= st) && end.is_none_or(|en| *min < en)
                    }
                    _ => true,
                },
                _ => true,
            };
        if in_time {
            match granules {
                None => {
                    groups.push(i);
                    selectors.push(RowSelector::select(rows));
                }
                Some(gs) => {
                    let mut local: Vec<RowSelector> = Vec::new();
                    let mut pos = first_row;
                    while next_granule < gs.len() {
                        let g_start = gs[next_granule] as usize * granule_rows;
                        if g_start >= last_row {
                            break;
                        }
                        let g_end = (g_start + granule_rows).min(last_row);
                        let s = g_start.max(pos);
                        if s > pos {
                            local.push(RowSelector::skip(s - pos));
                        }
                        if g_end > s {
                            // Adjacent granules make one run (a row-level index may select
                            // millions of rows).
                            match local.last_mut() {
                                Some(last) if !last.skip && s == pos && pos > first_row => {
                                    last.row_count += g_end - s;
                                }
                                _ => local.push(RowSelector::select(g_end - s)),
                            }
                            pos = g_end;
                        }
                        if g_start + granule_rows <= last_row {
                            next_granule += 1;
                        } else {
                            break;
                        }
                    }
                    if local.iter().any(|s| !s.skip) {
                        if pos < last_row {
                            local.push(RowSelector::skip(last_row - pos));
                        }
                        groups.push(i);
                        selectors.extend(local);
                    }
                }
            }
        } else if let Some(gs) = granules {
            while next_granule < gs.len()
                && (gs[next_granule] as usize + 1) * granule_rows <= last_row
            {
                next_granule += 1;
            }
        }
        first_row = last_row;
    }
    (groups, selectors.into())
}

/// The rows of an in-memory batch that pass every stage. The batch holds the signal's storage
/// columns, all of them or (from a store node's snapshot) those the read needs.
pub(crate) fn filter_memory_rows(
    signal: Signal,
    batch: &RecordBatch,
    stages: &[RowFilterStage],
) -> Result<RecordBatch, StoreError> {
    let mut kept = batch.clone();
    for stage in stages {
        if kept.num_rows() == 0 {
            break;
        }
        let columns = project_storage_columns(signal, &kept, &stage.columns)?;
        let mask = (stage.keep)(&columns)
            .map_err(|e| StoreError::arrow("evaluating a row filter on memory rows", e))?;
        kept = arrow::compute::filter_record_batch(&kept, &mask)
            .map_err(|e| StoreError::arrow("filtering memory rows", e))?;
    }
    Ok(kept)
}

/// Applies a projection (storage-schema column indices) to an in-memory batch.
fn project(
    signal: Signal,
    batch: &RecordBatch,
    projection: Option<&[usize]>,
) -> Result<RecordBatch, StoreError> {
    match projection {
        Some(p) => project_storage_columns(signal, batch, p),
        None => Ok(batch.clone()),
    }
}

/// The columns `wanted` (storage-schema indices) of an in-memory batch, found by name: a
/// store node's snapshot carries only some of the storage columns.
pub(crate) fn project_storage_columns(
    signal: Signal,
    batch: &RecordBatch,
    wanted: &[usize],
) -> Result<RecordBatch, StoreError> {
    let storage = signal.schema();
    let schema = batch.schema_ref();
    if schema.fields().len() == storage.fields().len() {
        return batch
            .project(wanted)
            .map_err(|e| StoreError::arrow("projecting memory rows", e));
    }
    let indices = wanted
        .iter()
        .map(|i| {
            let name = storage.fields().get(*i).map(|f| f.name().as_str());
            name.and_then(|n| schema.index_of(n).ok())
                .ok_or_else(|| StoreError::Invalid {
                    reason: format!(
                        "unflushed {signal} rows lack the column `{}` a read needs (a store node \
                         sent fewer columns than asked for)",
                        name.unwrap_or("?")
                    ),
                })
        })
        .collect::<Result<Vec<usize>, StoreError>>()?;
    batch
        .project(&indices)
        .map_err(|e| StoreError::arrow("projecting memory rows", e))
}

/// An in-memory batch with its attribute maps as queries read them.
fn to_read_batch(batch: &RecordBatch) -> Result<RecordBatch, StoreError> {
    let columns = batch
        .columns()
        .iter()
        .map(oxeye_model::schema::to_read_array)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::arrow("dictionary-encoding attribute values", e))?;
    let options =
        arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(
        oxeye_model::schema::read_schema(batch.schema_ref()),
        columns,
        &options,
    )
    .map_err(|e| StoreError::arrow("dictionary-encoding attribute values", e))
}

/// An unflushed batch as a read of `request` yields it: the rows its filter stages keep, in
/// `projection`'s columns (storage-schema indices), attribute values as the request wants them.
pub(crate) fn read_memory_batch(
    request: &ScanRequest,
    batch: &RecordBatch,
    projection: Option<&[usize]>,
) -> Result<RecordBatch, StoreError> {
    let kept = filter_memory_rows(request.signal, batch, &request.filter)?;
    let projected = project(request.signal, &kept, projection)?;
    if request.attribute_values_as_dictionary {
        to_read_batch(&projected)
    } else {
        Ok(projected)
    }
}

/// Segments whose index and footer are looked up at once while planning.
const PLAN_CONCURRENCY: usize = 8;

pub(crate) async fn plan(
    request: ScanRequest,
    segments: Vec<SegmentRef>,
    memory: Vec<RecordBatch>,
    pinned: Vec<crate::remote::PinnedRows>,
    storage: &Storage,
    caches: &Caches,
) -> Result<ScanPlan, StoreError> {
    let mut stats = ScanStats {
        segments_total: segments.len(),
        memory_batches: memory.len(),
        pinned_rows: pinned.iter().map(|p| p.rows).sum(),
        ..Default::default()
    };
    // Rows set aside on store nodes first: each partition fetches its share before it reads
    // segments, well within the time the nodes keep them.
    let mut parts: Vec<ScanPart> = pinned.into_iter().map(ScanPart::Remote).collect();
    let in_range: Vec<SegmentRef> = segments
        .into_iter()
        .filter(|meta| meta.overlaps(request.start, request.end))
        .collect();
    stats.segments_pruned_by_time = stats.segments_total - in_range.len();
    let hits: Vec<Option<Vec<u32>>> = match &request.index {
        None => vec![None; in_range.len()],
        Some(predicate) => {
            // Indexes not in memory yet are fetched a few at once.
            let indexes: Vec<Arc<SegmentIndex>> = futures::stream::iter(in_range.clone())
                .map(|meta| async move { caches.index(storage, &meta).await })
                .buffered(PLAN_CONCURRENCY)
                .try_collect()
                .await?;
            search_indexes(indexes, predicate, request.parallelism)
                .await?
                .into_iter()
                .map(Some)
                .collect()
        }
    };
    // Footers of the segments with hits; those not in memory are fetched a few at once.
    let looked_up: Vec<(SegmentRef, Option<Vec<u32>>, Footer)> =
        futures::stream::iter(in_range.into_iter().zip(hits))
            .filter(|(_, granules)| {
                futures::future::ready(granules.as_ref().is_none_or(|g| !g.is_empty()))
            })
            .map(|(meta, granules)| async move {
                let footer = caches.footer(storage, &meta).await?;
                Ok::<_, StoreError>((meta, granules, footer))
            })
            .buffered(PLAN_CONCURRENCY)
            .try_collect()
            .await?;
    if request.index.is_some() {
        stats.segments_pruned_by_index =
            stats.segments_total - stats.segments_pruned_by_time - looked_up.len();
    }
    for (meta, granules, footer) in looked_up {
        if let Some(hits) = &granules {
            stats.granules_selected += hits.len() as u64;
        }
        let row_groups = footer.stored.metadata().num_row_groups();
        let granule_rows = (meta.granule_rows as usize).max(1);
        let granules: Vec<u32> = match granules {
            Some(g) => g,
            // Several row groups: one part each, so partitions decode in parallel.
            None if row_groups > 1 => {
                for g in 0..row_groups {
                    parts.push(ScanPart::Segment {
                        meta: meta.clone(),
                        granules: None,
                        row_groups: Some(g..g + 1),
                    });
                }
                continue;
            }
            None => (0..u32::try_from((meta.rows as usize).div_ceil(granule_rows))
                .unwrap_or(u32::MAX))
                .collect(),
        };
        // One row group: split its granules into a few contiguous runs that readers share
        // (the page index lets each fetch only its own pages).
        let pieces = (granules.len() * granule_rows / MIN_ROWS_PER_PART)
            .clamp(1, request.parallelism.max(1));
        if pieces == 1 {
            // Granules the index found stay, even all of them: a row-level index's search may
            // answer a filter exactly, which a read of the whole segment would not know.
            let whole = granules.len() as u64 * granule_rows as u64 >= meta.rows;
            parts.push(ScanPart::Segment {
                meta,
                granules: (!whole || request.index.is_some()).then(|| Arc::new(granules)),
                row_groups: None,
            });
            continue;
        }
        let per = granules.len().div_ceil(pieces);
        for chunk in granules.chunks(per) {
            parts.push(ScanPart::Segment {
                meta: meta.clone(),
                granules: Some(Arc::new(chunk.to_vec())),
                row_groups: None,
            });
        }
    }
    // Unflushed rows: a few parts, so partitions share them.
    let chunk = memory.len().div_ceil(4).max(1);
    for batches in memory.chunks(chunk) {
        parts.push(ScanPart::Memory {
            batches: batches.to_vec(),
        });
    }
    Ok(ScanPlan {
        request,
        parts,
        stats,
    })
}

/// Granules of each index that `predicate` finds, in order. The searches run off the async
/// runtime in at most `parallelism` tasks: a trace lookup over many segments is a term lookup
/// per segment, cheaper than a thread hop each.
async fn search_indexes(
    indexes: Vec<Arc<SegmentIndex>>,
    predicate: &IndexPredicate,
    parallelism: usize,
) -> Result<Vec<Vec<u32>>, StoreError> {
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let per_task = indexes.len().div_ceil(parallelism.max(1));
    let tasks: Vec<_> = indexes
        .chunks(per_task)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let predicate = predicate.clone();
            tokio::task::spawn_blocking(move || {
                chunk
                    .iter()
                    .map(|index| index.search(&predicate))
                    .collect::<Result<Vec<_>, _>>()
            })
        })
        .collect();
    let mut out = Vec::with_capacity(indexes.len());
    for task in tasks {
        let found = task
            .await
            .map_err(|e| StoreError::index("searching indexes", e))??;
        out.extend(found);
    }
    Ok(out)
}

/// Reads one part. `projection` holds column indices of the signal's storage schema.
pub(crate) async fn read_part(
    part: &ScanPart,
    request: &ScanRequest,
    projection: Option<Vec<usize>>,
    batch_size: usize,
    storage: &Storage,
    caches: &Caches,
    metrics: &crate::metrics::StoreMetrics,
) -> Result<BoxStream<'static, Result<RecordBatch, StoreError>>, StoreError> {
    match part {
        ScanPart::Memory { batches } => {
            let out: Vec<Result<RecordBatch, StoreError>> = batches
                .iter()
                .map(|b| read_memory_batch(request, b, projection.as_deref()))
                .collect();
            Ok(stream::iter(out).boxed())
        }
        ScanPart::Remote(pinned) => Err(StoreError::Invalid {
            reason: format!(
                "rows set aside on store node {} are read through the store",
                pinned.node
            ),
        }),
        ScanPart::Segment {
            meta,
            granules,
            row_groups,
        } => {
            let footer = caches.footer(storage, meta).await?;
            let (groups, selection) = plan_row_groups(
                &footer.stored,
                request.signal.time_column(),
                request.start,
                request.end,
                granules.as_deref().map(|g| g.as_slice()),
                meta.granule_rows as usize,
                row_groups.as_ref(),
            );
            if groups.is_empty() {
                return Ok(stream::empty().boxed());
            }
            // Stages the index already answered exactly for these rows are not evaluated.
            let stages: Vec<&RowFilterStage> = request
                .filter
                .iter()
                .filter(|stage| !answered_by_index(stage, request, meta, granules.is_some()))
                .collect();
            // No column to read and nothing to test: the selection's size is the answer
            // (`count(*)` of what the index or the row groups select), no page is read.
            if projection.as_ref().is_some_and(|p| p.is_empty()) && stages.is_empty() {
                let rows = selection.row_count();
                metrics.rows_counted_unread.inc_by(rows as u64);
                return Ok(stream::iter(counted_batches(rows, batch_size).map(Ok)).boxed());
            }
            let footer = if request.attribute_values_as_dictionary {
                footer
                    .dictionary_values
                    .ok_or_else(|| StoreError::UnreadableSegment {
                        segment: meta.id.clone(),
                        reason: "its Parquet schema does not take dictionary-encoded attribute \
                                 values"
                            .into(),
                    })?
            } else {
                footer.stored
            };
            let reader = ObjectFileReader::new(storage, &meta.data_path, meta.data_bytes);
            let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, footer)
                .with_row_groups(groups)
                .with_row_selection(selection)
                .with_batch_size(batch_size.max(1));
            if let Some(p) = projection {
                let mask = ProjectionMask::roots(builder.parquet_schema(), p);
                builder = builder.with_projection(mask);
            }
            if !stages.is_empty() {
                let predicates = stages
                    .into_iter()
                    .map(|stage| {
                        let mask =
                            ProjectionMask::roots(builder.parquet_schema(), stage.columns.clone());
                        let keep = stage.keep.clone();
                        Box::new(ArrowPredicateFn::new(mask, move |batch| keep(&batch)))
                            as Box<dyn parquet::arrow::arrow_reader::ArrowPredicate>
                    })
                    .collect();
                builder = builder.with_row_filter(RowFilter::new(predicates));
            }
            let id = meta.id.clone();
            let stream = builder
                .build()
                .map_err(|e| StoreError::parquet(format!("reading segment {id}"), e))?;
            let id = meta.id.clone();
            Ok(stream
                .map_err(move |e| StoreError::parquet(format!("reading segment {id}"), e))
                .boxed())
        }
    }
}

/// Batches of no columns holding `rows` rows in all, at most `batch_size` each.
fn counted_batches(rows: usize, batch_size: usize) -> impl Iterator<Item = RecordBatch> {
    let batch_size = batch_size.max(1);
    let schema = Arc::new(arrow::datatypes::Schema::empty());
    (0..rows.div_ceil(batch_size)).filter_map(move |i| {
        let n = batch_size.min(rows - i * batch_size);
        let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(n));
        RecordBatch::try_new_with_options(schema.clone(), vec![], &options).ok()
    })
}

/// Whether the rows a read of `meta` selects through the index (`from_index`) all pass `stage`
/// already: the segment's index has a document per row, the scan's index predicate requires
/// the stage's own predicate, and that predicate is exact per row.
fn answered_by_index(
    stage: &RowFilterStage,
    request: &ScanRequest,
    meta: &SegmentRef,
    from_index: bool,
) -> bool {
    from_index
        && meta.granule_rows == 1
        && match (&stage.exact_index, &request.index) {
            (Some(own), Some(searched)) => own.exact_per_row() && searched.requires(own),
            _ => false,
        }
}

/// The schema a projection of `signal` produces.
pub fn projected_schema(
    signal: Signal,
    projection: Option<&[usize]>,
) -> Result<SchemaRef, StoreError> {
    let schema = signal.schema();
    match projection {
        Some(p) => {
            Ok(Arc::new(schema.project(p).map_err(|e| {
                StoreError::arrow("projecting a schema", e)
            })?))
        }
        None => Ok(schema),
    }
}
