//! Immutable Parquet segments: their metadata, sort order and encoding.
//!
//! Sort orders serve the lookups that matter and keep files small: spans by the start of their
//! trace, then trace id, then start time, so a trace's spans are adjacent (one granule, one or
//! two pages) and timestamps rise almost monotonically (delta-encoded, a byte or two each); logs
//! by `(service_name, time)`; metric points by `(name, service_name, time)`. Pages are cut every
//! `page_rows` rows, a multiple of the index granule, so an index hit maps to whole pages, which
//! the reader skips or reads with the page index.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, SortOptions, lexsort_to_indices, take_record_batch};
use arrow::datatypes::TimestampNanosecondType;
use oxeye_model::Signal;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Version of the segment layout written into each file's metadata.
pub const SEGMENT_FORMAT_VERSION: &str = "1";

/// A committed segment as the catalog records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: String,
    #[serde(with = "signal_name")]
    pub signal: Signal,
    pub shard: u32,
    /// Object path of the Parquet file.
    pub data_path: String,
    /// Object path of the index bundle.
    pub index_path: String,
    /// Smallest and largest value of the signal's time column (ns since the epoch).
    pub min_time: i64,
    pub max_time: i64,
    pub rows: u64,
    pub data_bytes: u64,
    pub index_bytes: u64,
    pub granule_rows: u32,
    /// 0 for a segment written by a flush; a merge's output is one more than its highest input.
    pub level: u32,
    pub created_unix_ms: u64,
}

impl SegmentMeta {
    pub fn overlaps(&self, start: Option<i64>, end: Option<i64>) -> bool {
        start.is_none_or(|s| self.max_time >= s) && end.is_none_or(|e| self.min_time < e)
    }
}

mod signal_name {
    use oxeye_model::Signal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Signal, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.table_name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Signal, D::Error> {
        let s = String::deserialize(de)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A new segment id: time-ordered, unique per process and shard.
pub fn new_segment_id(shard: u32) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016x}-{shard:04}-{:08x}-{:06x}",
        now_unix_nanos(),
        std::process::id(),
        n & 0xff_ffff
    )
}

/// Object paths of a segment's data and index.
pub fn object_paths(signal: Signal, id: &str) -> (String, String) {
    let base = format!("segments/{}/{id}", signal.table_name());
    (format!("{base}.parquet"), format!("{base}.index"))
}

fn sort_columns(signal: Signal) -> &'static [&'static str] {
    match signal {
        Signal::Spans => &["trace_id", "start_time"],
        Signal::Logs => &["service_name", "time"],
        _ => &["name", "service_name", "time"],
    }
}

fn sort_keys(batch: &RecordBatch, names: &[&str]) -> Vec<SortColumn> {
    names
        .iter()
        .filter_map(|name| batch.column_by_name(name))
        .map(|values| SortColumn {
            values: values.clone(),
            options: Some(SortOptions::default()),
        })
        .collect()
}

/// For each row of a spans batch, the earliest start time of its trace (in this batch).
fn trace_starts(batch: &RecordBatch, by_trace: &UInt32Array) -> Option<arrow::array::Int64Array> {
    let ids = batch
        .column_by_name("trace_id")?
        .as_any()
        .downcast_ref::<arrow::array::FixedSizeBinaryArray>()?;
    let starts = batch
        .column_by_name("start_time")?
        .as_primitive_opt::<TimestampNanosecondType>()?;
    let mut out = vec![0i64; batch.num_rows()];
    let mut run_start = 0i64;
    let mut previous: Option<&[u8]> = None;
    // `by_trace` orders rows by (trace_id, start_time): a run's first row starts the trace.
    for idx in by_trace.values().iter().map(|i| *i as usize) {
        let id = ids.value(idx);
        if previous != Some(id) {
            run_start = starts.value(idx);
            previous = Some(id);
        }
        out[idx] = run_start;
    }
    Some(arrow::array::Int64Array::from(out))
}

/// Sorts a batch into segment order.
pub fn sort_for_segment(signal: Signal, batch: &RecordBatch) -> Result<RecordBatch, StoreError> {
    let columns = sort_keys(batch, sort_columns(signal));
    if columns.is_empty() || batch.num_rows() <= 1 {
        return Ok(batch.clone());
    }
    let mut indices: UInt32Array = lexsort_to_indices(&columns, None)
        .map_err(|e| StoreError::arrow("sorting a segment", e))?;
    if signal == Signal::Spans
        && let Some(trace_start) = trace_starts(batch, &indices)
    {
        let mut keys = vec![SortColumn {
            values: Arc::new(trace_start),
            options: Some(SortOptions::default()),
        }];
        keys.extend(columns);
        indices = lexsort_to_indices(&keys, None)
            .map_err(|e| StoreError::arrow("sorting a segment", e))?;
    }
    take_record_batch(batch, &indices).map_err(|e| StoreError::arrow("reordering a segment", e))
}

/// How a segment is cut: rows per data page, per index granule, per row group.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub page_rows: usize,
    pub granule_rows: usize,
    pub row_group_rows: usize,
}

impl Layout {
    /// Logs are indexed row by row: a word in 2% of lines is in nearly every 1024-row granule,
    /// so only a row-level index prunes for it, and with one row per granule a full-text
    /// search finds exactly the matching lines (a count needs no Parquet read). Other signals
    /// index granules of whole pages.
    pub fn for_signal(signal: Signal, page_rows: usize, row_group_rows: usize) -> Layout {
        let page_rows = page_rows.max(1);
        Layout {
            page_rows,
            granule_rows: if signal == Signal::Logs { 1 } else { page_rows },
            row_group_rows: row_group_rows.max(page_rows),
        }
    }
}

/// Timestamps that rise (almost) monotonically in segment order: delta-encoded.
fn delta_columns(signal: Signal) -> &'static [&'static str] {
    match signal {
        Signal::Spans => &["start_time"],
        Signal::Logs => &["time", "observed_time"],
        _ => &["time", "start_time"],
    }
}

/// Smallest and largest value of the signal's time column.
pub fn time_range(signal: Signal, batch: &RecordBatch) -> Option<(i64, i64)> {
    let times = batch
        .column_by_name(signal.time_column())?
        .as_primitive_opt::<TimestampNanosecondType>()?;
    let min = arrow::compute::min(times)?;
    let max = arrow::compute::max(times)?;
    Some((min, max))
}

/// Parquet settings for a segment of `signal`.
pub fn writer_properties(signal: Signal, layout: Layout) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(layout.row_group_rows))
        .set_data_page_row_count_limit(layout.page_rows)
        .set_write_batch_size(layout.page_rows)
        .set_key_value_metadata(Some(vec![
            KeyValue::new(
                "oxeye.segment_format".into(),
                SEGMENT_FORMAT_VERSION.to_string(),
            ),
            KeyValue::new("oxeye.signal".into(), signal.table_name().to_string()),
        ]));
    for column in delta_columns(signal) {
        let path = ColumnPath::from(*column);
        b = b
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, parquet::basic::Encoding::DELTA_BINARY_PACKED);
    }
    if matches!(signal, Signal::Spans | Signal::Logs) {
        b = b
            .set_column_bloom_filter_enabled(ColumnPath::from("trace_id"), true)
            .set_column_bloom_filter_fpp(ColumnPath::from("trace_id"), 0.01);
    }
    b.build()
}

/// Encodes a sorted batch as a Parquet file.
pub fn encode_parquet(
    signal: Signal,
    batch: &RecordBatch,
    layout: Layout,
) -> Result<Vec<u8>, StoreError> {
    let props = writer_properties(signal, layout);
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))
        .map_err(|e| StoreError::parquet(format!("opening a {signal} segment writer"), e))?;
    // Feed the writer page by page so page boundaries fall on granule boundaries.
    let mut offset = 0;
    while offset < batch.num_rows() {
        let len = layout.page_rows.min(batch.num_rows() - offset);
        writer
            .write(&batch.slice(offset, len))
            .map_err(|e| StoreError::parquet(format!("writing a {signal} segment"), e))?;
        offset += len;
    }
    writer
        .close()
        .map_err(|e| StoreError::parquet(format!("closing a {signal} segment"), e))?;
    Ok(out)
}

/// A segment built in memory, ready to be stored.
pub struct BuiltSegment {
    pub meta: SegmentMeta,
    pub data: Vec<u8>,
    pub index: Vec<u8>,
}

/// Sorts, encodes and indexes rows of one signal into a segment (CPU work: call it off the
/// async runtime).
pub fn build_segment(
    signal: Signal,
    shard: u32,
    level: u32,
    batches: &[RecordBatch],
    layout: Layout,
    scratch: &std::path::Path,
) -> Result<Option<BuiltSegment>, StoreError> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if batches.is_empty() {
        return Ok(None);
    }
    let schema = signal.schema();
    let all = arrow::compute::concat_batches(&schema, batches.iter().copied())
        .map_err(|e| StoreError::arrow("gathering rows for a segment", e))?;
    let sorted = sort_for_segment(signal, &all)?;
    drop(all);
    let (min_time, max_time) = time_range(signal, &sorted).unwrap_or((0, 0));
    let data = encode_parquet(signal, &sorted, layout)?;
    let index = crate::index::build(signal, &sorted, layout.granule_rows, scratch)?;
    let id = new_segment_id(shard);
    let (data_path, index_path) = object_paths(signal, &id);
    Ok(Some(BuiltSegment {
        meta: SegmentMeta {
            id,
            signal,
            shard,
            data_path,
            index_path,
            min_time,
            max_time,
            rows: sorted.num_rows() as u64,
            data_bytes: data.len() as u64,
            index_bytes: index.len() as u64,
            granule_rows: layout.granule_rows as u32,
            level,
            created_unix_ms: now_unix_ms(),
        },
        data,
        index,
    }))
}

/// Granule numbers -> the row selection that reads only them.
pub fn granules_to_selection(
    granules: &[u32],
    granule_rows: usize,
    total_rows: usize,
) -> parquet::arrow::arrow_reader::RowSelection {
    use parquet::arrow::arrow_reader::RowSelector;
    let mut selectors = Vec::new();
    let mut pos = 0usize;
    for &g in granules {
        let start = (g as usize * granule_rows).min(total_rows);
        let end = (start + granule_rows).min(total_rows);
        if start < pos {
            continue;
        }
        if start > pos {
            selectors.push(RowSelector::skip(start - pos));
        }
        if end > start {
            selectors.push(RowSelector::select(end - start));
        }
        pos = end;
    }
    if pos < total_rows {
        selectors.push(RowSelector::skip(total_rows - pos));
    }
    selectors.into()
}

/// Shared handle to segment metadata (a query's plan keeps its segments alive).
pub type SegmentRef = Arc<SegmentMeta>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::spans_batch;
    use arrow::array::{Array, FixedSizeBinaryArray};

    #[test]
    fn spans_group_by_trace_and_order_by_trace_start() {
        use arrow::array::TimestampNanosecondArray;
        let b = spans_batch(0, 200).batch;
        let sorted = sort_for_segment(Signal::Spans, &b).unwrap();
        let ids = sorted
            .column_by_name("trace_id")
            .unwrap()
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .unwrap();
        let starts = sorted
            .column_by_name("start_time")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut last_trace_start = i64::MIN;
        for i in 0..ids.len() {
            let new_trace = i == 0 || ids.value(i) != ids.value(i - 1);
            if new_trace {
                assert!(
                    seen.insert(ids.value(i).to_vec()),
                    "a trace's spans are adjacent"
                );
                assert!(
                    starts.value(i) >= last_trace_start,
                    "traces in order of their start"
                );
                last_trace_start = starts.value(i);
            } else {
                assert!(
                    starts.value(i) >= starts.value(i - 1),
                    "spans of a trace by start time"
                );
            }
        }
        assert_eq!(seen.len(), 20);
    }

    #[test]
    fn granule_selection_skips_the_rest() {
        let s = granules_to_selection(&[1, 3], 10, 35);
        assert_eq!(s.row_count(), 15);
        let s = granules_to_selection(&[], 10, 35);
        assert_eq!(s.row_count(), 0);
    }
}
