//! Metrics: OTLP `ExportMetricsServiceRequest` <-> the `metrics` (gauge and sum points),
//! `histograms`, `exp_histograms` and `summaries` tables.
//!
//! One row per data point. Every row repeats its metric's name, description, unit and
//! metadata (dictionary-encoded, so repetition is cheap) and its resource and scope.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Float64Array,
    Float64Builder, Int32Array, Int32Builder, Int64Array, Int64Builder, ListArray, StructArray,
    TimestampNanosecondArray, TimestampNanosecondBuilder, UInt32Array, UInt32Builder, UInt64Array,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;

use crate::attributes::{AttributesBuilder, AttributesReader};
use crate::enums::{METRIC_TYPE_GAUGE, METRIC_TYPE_SUM, temporality_name, temporality_number};
use crate::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use crate::otlp::common::v1::KeyValue;
use crate::otlp::metrics::v1::{
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, exemplar, exponential_histogram_data_point::Buckets, metric::Data,
    number_data_point, summary_data_point::ValueAtQuantile,
};
use crate::resource::{Origin, ResourceScopeBuilder, ResourceScopeReader, RowOrigin};
use crate::schema::{TIMEZONE, exemplar_fields, quantile_fields};
use crate::util::{Columns, DictBuilder, ListOffsets, nanos, unnanos};
use crate::{Converted, ModelError, Signal, SignalBatch};

fn item(dt: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", dt, false))
}

struct ExemplarsBuilder {
    time: TimestampNanosecondBuilder,
    value: Float64Builder,
    value_int: Int64Builder,
    span_id: BinaryBuilder,
    trace_id: BinaryBuilder,
    attributes: AttributesBuilder,
    offsets: ListOffsets,
    len: usize,
}

impl Default for ExemplarsBuilder {
    fn default() -> Self {
        ExemplarsBuilder {
            time: TimestampNanosecondBuilder::new().with_timezone(TIMEZONE),
            value: Float64Builder::new(),
            value_int: Int64Builder::new(),
            span_id: BinaryBuilder::new(),
            trace_id: BinaryBuilder::new(),
            attributes: AttributesBuilder::new(),
            offsets: ListOffsets::default(),
            len: 0,
        }
    }
}

impl ExemplarsBuilder {
    fn append(&mut self, exemplars: &[Exemplar]) -> Result<(), ModelError> {
        for e in exemplars {
            self.time.append_value(nanos(e.time_unix_nano));
            match e.value {
                Some(exemplar::Value::AsDouble(d)) => {
                    self.value.append_value(d);
                    self.value_int.append_null();
                }
                Some(exemplar::Value::AsInt(i)) => {
                    self.value.append_value(i as f64);
                    self.value_int.append_value(i);
                }
                None => {
                    self.value.append_null();
                    self.value_int.append_null();
                }
            }
            self.span_id.append_value(&e.span_id);
            self.trace_id.append_value(&e.trace_id);
            self.attributes.append(&e.filtered_attributes)?;
        }
        self.len += exemplars.len();
        self.offsets.push(self.len);
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        let (attrs, typed) = self.attributes.finish();
        let fields = exemplar_fields();
        let values = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(self.time.finish()),
                Arc::new(self.value.finish()),
                Arc::new(self.value_int.finish()),
                Arc::new(self.span_id.finish()),
                Arc::new(self.trace_id.finish()),
                attrs,
                typed,
            ],
            None,
        );
        self.len = 0;
        self.offsets
            .finish(item(DataType::Struct(fields)), Arc::new(values))
    }
}

/// What every data point kind has in common.
struct PointHead<'a> {
    attributes: &'a [KeyValue],
    start_time_unix_nano: u64,
    time_unix_nano: u64,
    flags: u32,
    exemplars: &'a [Exemplar],
}

/// Columns every metric table starts with (schema::metric_head) plus resource and scope.
#[derive(Default)]
struct HeadBuilder {
    time: TimestampNanosecondBuilder,
    start_time: TimestampNanosecondBuilder,
    name: DictBuilder,
    description: DictBuilder,
    unit: DictBuilder,
    attributes: AttributesBuilder,
    flags: UInt32Builder,
    exemplars: ExemplarsBuilder,
    metadata: AttributesBuilder,
    origin: ResourceScopeBuilder,
    rows: usize,
    /// The metric of the previous point: points of one metric arrive together.
    last_metric: Option<*const Metric>,
    /// Whether the point just appended belongs to the same metric as the one before it, so
    /// the kind-specific columns can repeat their last value too.
    last_metric_was_repeated: bool,
}

impl HeadBuilder {
    fn new() -> Self {
        HeadBuilder {
            time: TimestampNanosecondBuilder::new().with_timezone(TIMEZONE),
            start_time: TimestampNanosecondBuilder::new().with_timezone(TIMEZONE),
            ..Default::default()
        }
    }

    fn append(
        &mut self,
        metric: &Metric,
        p: PointHead<'_>,
        origin: &Origin<'_>,
    ) -> Result<(), ModelError> {
        self.time.append_value(nanos(p.time_unix_nano));
        self.start_time.append_value(nanos(p.start_time_unix_nano));
        let same = self.last_metric == Some(metric as *const Metric);
        self.last_metric = Some(metric as *const Metric);
        self.last_metric_was_repeated = same;
        if same {
            self.name.repeat_last();
            self.description.repeat_last();
            self.unit.repeat_last();
            self.metadata.repeat_last(&metric.metadata)?;
        } else {
            self.name.append_value(&metric.name)?;
            self.description.append_value(&metric.description)?;
            self.unit.append_value(&metric.unit)?;
            self.metadata.append(&metric.metadata)?;
        }
        self.attributes.append(p.attributes)?;
        self.flags.append_value(p.flags);
        self.exemplars.append(p.exemplars)?;
        self.origin.append(origin)?;
        self.rows += 1;
        Ok(())
    }

    /// Assembles a batch: head columns, then `tail`, then resource and scope columns.
    fn finish(&mut self, signal: Signal, tail: Vec<ArrayRef>) -> Result<RecordBatch, ModelError> {
        let (attrs, attrs_typed) = self.attributes.finish();
        let (meta, meta_typed) = self.metadata.finish();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.start_time.finish()),
            self.name.finish(),
            self.description.finish(),
            self.unit.finish(),
            attrs,
            attrs_typed,
            Arc::new(self.flags.finish()),
            self.exemplars.finish(),
            meta,
            meta_typed,
        ];
        columns.extend(tail);
        columns.extend(self.origin.finish());
        self.rows = 0;
        self.last_metric = None;
        RecordBatch::try_new(signal.schema(), columns)
            .map_err(ModelError::arrow("assembling a metrics batch"))
    }
}

fn u64_list(values: &mut UInt64Builder, offsets: &mut ListOffsets, len: &mut usize, items: &[u64]) {
    values.append_slice(items);
    *len += items.len();
    offsets.push(*len);
}

struct NumberBuilder {
    head: HeadBuilder,
    kind: DictBuilder,
    is_monotonic: BooleanBuilder,
    temporality: DictBuilder,
    value: Float64Builder,
    value_int: Int64Builder,
}

impl NumberBuilder {
    fn new() -> Self {
        NumberBuilder {
            head: HeadBuilder::new(),
            kind: DictBuilder::new(),
            is_monotonic: BooleanBuilder::new(),
            temporality: DictBuilder::new(),
            value: Float64Builder::new(),
            value_int: Int64Builder::new(),
        }
    }

    fn append(
        &mut self,
        metric: &Metric,
        sum: Option<&Sum>,
        p: &NumberDataPoint,
        origin: &Origin<'_>,
    ) -> Result<(), ModelError> {
        self.head.append(
            metric,
            PointHead {
                attributes: &p.attributes,
                start_time_unix_nano: p.start_time_unix_nano,
                time_unix_nano: p.time_unix_nano,
                flags: p.flags,
                exemplars: &p.exemplars,
            },
            origin,
        )?;
        let same_metric = self.head.last_metric_was_repeated;
        match sum {
            Some(s) if same_metric => {
                self.kind.repeat_last();
                self.is_monotonic.append_value(s.is_monotonic);
                self.temporality.repeat_last();
            }
            None if same_metric => {
                self.kind.repeat_last();
                self.is_monotonic.append_null();
                self.temporality.append_null();
            }
            Some(s) => {
                self.kind.append_value(METRIC_TYPE_SUM)?;
                self.is_monotonic.append_value(s.is_monotonic);
                self.temporality
                    .append_value(temporality_name(s.aggregation_temporality))?;
            }
            None => {
                self.kind.append_value(METRIC_TYPE_GAUGE)?;
                self.is_monotonic.append_null();
                self.temporality.append_null();
            }
        }
        match p.value {
            Some(number_data_point::Value::AsDouble(d)) => {
                self.value.append_value(d);
                self.value_int.append_null();
            }
            Some(number_data_point::Value::AsInt(i)) => {
                self.value.append_value(i as f64);
                self.value_int.append_value(i);
            }
            None => {
                self.value.append_null();
                self.value_int.append_null();
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<RecordBatch, ModelError> {
        let tail: Vec<ArrayRef> = vec![
            self.kind.finish(),
            Arc::new(self.is_monotonic.finish()),
            self.temporality.finish(),
            Arc::new(self.value.finish()),
            Arc::new(self.value_int.finish()),
        ];
        self.head.finish(Signal::Metrics, tail)
    }
}

#[derive(Default)]
struct HistogramBuilder {
    head: HeadBuilder,
    temporality: DictBuilder,
    count: UInt64Builder,
    sum: Float64Builder,
    min: Float64Builder,
    max: Float64Builder,
    bucket_counts: UInt64Builder,
    bucket_offsets: ListOffsets,
    bucket_len: usize,
    bounds: Float64Builder,
    bound_offsets: ListOffsets,
    bound_len: usize,
}

impl HistogramBuilder {
    fn new() -> Self {
        HistogramBuilder {
            head: HeadBuilder::new(),
            ..Default::default()
        }
    }

    fn append(
        &mut self,
        metric: &Metric,
        h: &Histogram,
        p: &HistogramDataPoint,
        origin: &Origin<'_>,
    ) -> Result<(), ModelError> {
        self.head.append(
            metric,
            PointHead {
                attributes: &p.attributes,
                start_time_unix_nano: p.start_time_unix_nano,
                time_unix_nano: p.time_unix_nano,
                flags: p.flags,
                exemplars: &p.exemplars,
            },
            origin,
        )?;
        if self.head.last_metric_was_repeated {
            self.temporality.repeat_last();
        } else {
            self.temporality
                .append_value(temporality_name(h.aggregation_temporality))?;
        }
        self.count.append_value(p.count);
        self.sum.append_option(p.sum);
        self.min.append_option(p.min);
        self.max.append_option(p.max);
        u64_list(
            &mut self.bucket_counts,
            &mut self.bucket_offsets,
            &mut self.bucket_len,
            &p.bucket_counts,
        );
        self.bounds.append_slice(&p.explicit_bounds);
        self.bound_len += p.explicit_bounds.len();
        self.bound_offsets.push(self.bound_len);
        Ok(())
    }

    fn finish(&mut self) -> Result<RecordBatch, ModelError> {
        self.bucket_len = 0;
        self.bound_len = 0;
        let tail: Vec<ArrayRef> = vec![
            self.temporality.finish(),
            Arc::new(self.count.finish()),
            Arc::new(self.sum.finish()),
            Arc::new(self.min.finish()),
            Arc::new(self.max.finish()),
            self.bucket_offsets.finish(
                item(DataType::UInt64),
                Arc::new(self.bucket_counts.finish()),
            ),
            self.bound_offsets
                .finish(item(DataType::Float64), Arc::new(self.bounds.finish())),
        ];
        self.head.finish(Signal::Histograms, tail)
    }
}

#[derive(Default)]
struct ExpHistogramBuilder {
    head: HeadBuilder,
    temporality: DictBuilder,
    count: UInt64Builder,
    sum: Float64Builder,
    min: Float64Builder,
    max: Float64Builder,
    scale: Int32Builder,
    zero_count: UInt64Builder,
    zero_threshold: Float64Builder,
    positive_offset: Int32Builder,
    positive_counts: UInt64Builder,
    positive_offsets: ListOffsets,
    positive_len: usize,
    negative_offset: Int32Builder,
    negative_counts: UInt64Builder,
    negative_offsets: ListOffsets,
    negative_len: usize,
}

impl ExpHistogramBuilder {
    fn new() -> Self {
        ExpHistogramBuilder {
            head: HeadBuilder::new(),
            ..Default::default()
        }
    }

    fn append(
        &mut self,
        metric: &Metric,
        h: &ExponentialHistogram,
        p: &ExponentialHistogramDataPoint,
        origin: &Origin<'_>,
    ) -> Result<(), ModelError> {
        self.head.append(
            metric,
            PointHead {
                attributes: &p.attributes,
                start_time_unix_nano: p.start_time_unix_nano,
                time_unix_nano: p.time_unix_nano,
                flags: p.flags,
                exemplars: &p.exemplars,
            },
            origin,
        )?;
        if self.head.last_metric_was_repeated {
            self.temporality.repeat_last();
        } else {
            self.temporality
                .append_value(temporality_name(h.aggregation_temporality))?;
        }
        self.count.append_value(p.count);
        self.sum.append_option(p.sum);
        self.min.append_option(p.min);
        self.max.append_option(p.max);
        self.scale.append_value(p.scale);
        self.zero_count.append_value(p.zero_count);
        self.zero_threshold.append_value(p.zero_threshold);
        self.positive_offset
            .append_option(p.positive.as_ref().map(|b| b.offset));
        u64_list(
            &mut self.positive_counts,
            &mut self.positive_offsets,
            &mut self.positive_len,
            p.positive
                .as_ref()
                .map(|b| b.bucket_counts.as_slice())
                .unwrap_or(&[]),
        );
        self.negative_offset
            .append_option(p.negative.as_ref().map(|b| b.offset));
        u64_list(
            &mut self.negative_counts,
            &mut self.negative_offsets,
            &mut self.negative_len,
            p.negative
                .as_ref()
                .map(|b| b.bucket_counts.as_slice())
                .unwrap_or(&[]),
        );
        Ok(())
    }

    fn finish(&mut self) -> Result<RecordBatch, ModelError> {
        self.positive_len = 0;
        self.negative_len = 0;
        let tail: Vec<ArrayRef> = vec![
            self.temporality.finish(),
            Arc::new(self.count.finish()),
            Arc::new(self.sum.finish()),
            Arc::new(self.min.finish()),
            Arc::new(self.max.finish()),
            Arc::new(self.scale.finish()),
            Arc::new(self.zero_count.finish()),
            Arc::new(self.zero_threshold.finish()),
            Arc::new(self.positive_offset.finish()),
            self.positive_offsets.finish(
                item(DataType::UInt64),
                Arc::new(self.positive_counts.finish()),
            ),
            Arc::new(self.negative_offset.finish()),
            self.negative_offsets.finish(
                item(DataType::UInt64),
                Arc::new(self.negative_counts.finish()),
            ),
        ];
        self.head.finish(Signal::ExpHistograms, tail)
    }
}

#[derive(Default)]
struct SummaryBuilder {
    head: HeadBuilder,
    count: UInt64Builder,
    sum: Float64Builder,
    quantile: Float64Builder,
    quantile_value: Float64Builder,
    offsets: ListOffsets,
    len: usize,
}

impl SummaryBuilder {
    fn new() -> Self {
        SummaryBuilder {
            head: HeadBuilder::new(),
            ..Default::default()
        }
    }

    fn append(
        &mut self,
        metric: &Metric,
        p: &SummaryDataPoint,
        origin: &Origin<'_>,
    ) -> Result<(), ModelError> {
        self.head.append(
            metric,
            PointHead {
                attributes: &p.attributes,
                start_time_unix_nano: p.start_time_unix_nano,
                time_unix_nano: p.time_unix_nano,
                flags: p.flags,
                exemplars: &[],
            },
            origin,
        )?;
        self.count.append_value(p.count);
        self.sum.append_value(p.sum);
        for q in &p.quantile_values {
            self.quantile.append_value(q.quantile);
            self.quantile_value.append_value(q.value);
        }
        self.len += p.quantile_values.len();
        self.offsets.push(self.len);
        Ok(())
    }

    fn finish(&mut self) -> Result<RecordBatch, ModelError> {
        self.len = 0;
        let fields = quantile_fields();
        let quantiles = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(self.quantile.finish()),
                Arc::new(self.quantile_value.finish()),
            ],
            None,
        );
        let tail: Vec<ArrayRef> = vec![
            Arc::new(self.count.finish()),
            Arc::new(self.sum.finish()),
            self.offsets
                .finish(item(DataType::Struct(fields)), Arc::new(quantiles)),
        ];
        self.head.finish(Signal::Summaries, tail)
    }
}

/// Converts a metrics export request into up to four batches, one per metric table.
/// Points of a metric without a name are rejected.
pub fn metrics_from_otlp(request: &ExportMetricsServiceRequest) -> Result<Converted, ModelError> {
    let mut out = Converted::default();
    // Builders are made on first use: a collection usually holds one or two point kinds, and
    // setting up every table's builders per request would cost more than converting it.
    let mut numbers: Option<NumberBuilder> = None;
    let mut histograms: Option<HistogramBuilder> = None;
    let mut exp_histograms: Option<ExpHistogramBuilder> = None;
    let mut summaries: Option<SummaryBuilder> = None;
    for rm in &request.resource_metrics {
        for sm in &rm.scope_metrics {
            let origin = Origin {
                resource: rm.resource.as_ref(),
                resource_schema_url: &rm.schema_url,
                scope: sm.scope.as_ref(),
                scope_schema_url: &sm.schema_url,
            };
            for metric in &sm.metrics {
                let points = point_count(metric);
                if metric.name.is_empty() {
                    for _ in 0..points {
                        out.reject(|| "metric has an empty name; every metric needs one".into());
                    }
                    continue;
                }
                match &metric.data {
                    Some(Data::Gauge(g)) => {
                        let b = numbers.get_or_insert_with(NumberBuilder::new);
                        for p in &g.data_points {
                            b.append(metric, None, p, &origin)?;
                        }
                    }
                    Some(Data::Sum(s)) => {
                        let b = numbers.get_or_insert_with(NumberBuilder::new);
                        for p in &s.data_points {
                            b.append(metric, Some(s), p, &origin)?;
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        let b = histograms.get_or_insert_with(HistogramBuilder::new);
                        for p in &h.data_points {
                            b.append(metric, h, p, &origin)?;
                        }
                    }
                    Some(Data::ExponentialHistogram(h)) => {
                        let b = exp_histograms.get_or_insert_with(ExpHistogramBuilder::new);
                        for p in &h.data_points {
                            b.append(metric, h, p, &origin)?;
                        }
                    }
                    Some(Data::Summary(s)) => {
                        let b = summaries.get_or_insert_with(SummaryBuilder::new);
                        for p in &s.data_points {
                            b.append(metric, p, &origin)?;
                        }
                    }
                    None => {}
                }
                out.accepted += points as u64;
            }
        }
    }
    if let Some(mut b) = numbers.filter(|b| b.head.rows > 0) {
        out.batches
            .push(SignalBatch::new(Signal::Metrics, b.finish()?));
    }
    if let Some(mut b) = histograms.filter(|b| b.head.rows > 0) {
        out.batches
            .push(SignalBatch::new(Signal::Histograms, b.finish()?));
    }
    if let Some(mut b) = exp_histograms.filter(|b| b.head.rows > 0) {
        out.batches
            .push(SignalBatch::new(Signal::ExpHistograms, b.finish()?));
    }
    if let Some(mut b) = summaries.filter(|b| b.head.rows > 0) {
        out.batches
            .push(SignalBatch::new(Signal::Summaries, b.finish()?));
    }
    Ok(out)
}

/// Number of data points in a metric.
pub fn point_count(metric: &Metric) -> usize {
    match &metric.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

// ---- back to OTLP ----

struct ExemplarsReader<'a> {
    list: &'a ListArray,
    time: &'a TimestampNanosecondArray,
    value: &'a Float64Array,
    value_int: &'a Int64Array,
    span_id: &'a BinaryArray,
    trace_id: &'a BinaryArray,
    attributes: AttributesReader<'a>,
}

fn child<'a, T: Array + 'static>(
    s: &'a StructArray,
    name: &str,
    table: &'static str,
) -> Result<&'a T, ModelError> {
    s.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ModelError::Column {
            table,
            column: name.to_string(),
        })
}

impl<'a> ExemplarsReader<'a> {
    fn new(list: &'a ListArray, table: &'static str) -> Result<Self, ModelError> {
        let s = list
            .values()
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| ModelError::Column {
                table,
                column: "exemplars".into(),
            })?;
        let raw = |name: &str| {
            s.column_by_name(name)
                .map(|a| a.as_ref())
                .ok_or_else(|| ModelError::Column {
                    table,
                    column: format!("exemplars.{name}"),
                })
        };
        Ok(ExemplarsReader {
            list,
            time: child(s, "time", table)?,
            value: child(s, "value", table)?,
            value_int: child(s, "value_int", table)?,
            span_id: child(s, "span_id", table)?,
            trace_id: child(s, "trace_id", table)?,
            attributes: AttributesReader::new(
                raw("filtered_attributes")?,
                raw("filtered_attributes_typed")?,
                "exemplars.filtered_attributes",
            )?,
        })
    }

    fn row(&self, row: usize) -> Result<Vec<Exemplar>, ModelError> {
        let offsets = self.list.value_offsets();
        (offsets[row] as usize..offsets[row + 1] as usize)
            .map(|i| {
                Ok(Exemplar {
                    filtered_attributes: self.attributes.row(i)?,
                    time_unix_nano: unnanos(self.time.value(i)),
                    span_id: self.span_id.value(i).to_vec(),
                    trace_id: self.trace_id.value(i).to_vec(),
                    value: if self.value_int.is_valid(i) {
                        Some(exemplar::Value::AsInt(self.value_int.value(i)))
                    } else if self.value.is_valid(i) {
                        Some(exemplar::Value::AsDouble(self.value.value(i)))
                    } else {
                        None
                    },
                })
            })
            .collect()
    }
}

struct HeadReader<'a> {
    time: &'a TimestampNanosecondArray,
    start_time: &'a TimestampNanosecondArray,
    name: crate::util::DictReader<'a>,
    description: crate::util::DictReader<'a>,
    unit: crate::util::DictReader<'a>,
    attributes: AttributesReader<'a>,
    flags: &'a UInt32Array,
    exemplars: ExemplarsReader<'a>,
    metadata: AttributesReader<'a>,
    origins: ResourceScopeReader<'a>,
}

/// The common parts of one point read back.
struct HeadRow {
    metric: Metric,
    attributes: Vec<KeyValue>,
    start_time_unix_nano: u64,
    time_unix_nano: u64,
    flags: u32,
    exemplars: Vec<Exemplar>,
    origin: RowOrigin,
}

impl<'a> HeadReader<'a> {
    fn new(cols: &Columns<'a>) -> Result<Self, ModelError> {
        Ok(HeadReader {
            time: cols.get("time")?,
            start_time: cols.get("start_time")?,
            name: cols.dict("name")?,
            description: cols.dict("description")?,
            unit: cols.dict("unit")?,
            attributes: AttributesReader::new(
                cols.array("attributes")?.as_ref(),
                cols.array("attributes_typed")?.as_ref(),
                "attributes",
            )?,
            flags: cols.get("flags")?,
            exemplars: ExemplarsReader::new(cols.list("exemplars")?, cols.table)?,
            metadata: AttributesReader::new(
                cols.array("metadata")?.as_ref(),
                cols.array("metadata_typed")?.as_ref(),
                "metadata",
            )?,
            origins: ResourceScopeReader::new(cols)?,
        })
    }

    fn row(&self, i: usize) -> Result<HeadRow, ModelError> {
        Ok(HeadRow {
            metric: Metric {
                name: self.name.value(i).to_string(),
                description: self.description.value(i).to_string(),
                unit: self.unit.value(i).to_string(),
                metadata: self.metadata.row(i)?,
                data: None,
            },
            attributes: self.attributes.row(i)?,
            start_time_unix_nano: unnanos(self.start_time.value(i)),
            time_unix_nano: unnanos(self.time.value(i)),
            flags: self.flags.value(i),
            exemplars: self.exemplars.row(i)?,
            origin: self.origins.row(i)?,
        })
    }
}

fn u64s(
    list: &ListArray,
    row: usize,
    column: &str,
    table: &'static str,
) -> Result<Vec<u64>, ModelError> {
    let values = list.value(row);
    let values = values
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| ModelError::Column {
            table,
            column: column.to_string(),
        })?;
    Ok(values.values().to_vec())
}

/// Appends one point (as a metric holding just that point) to the request, merging it into the
/// previous metric when resource, scope and metric identity are the same.
fn push_point(request: &mut ExportMetricsServiceRequest, origin: RowOrigin, metric: Metric) {
    let same_resource = request.resource_metrics.last().is_some_and(|rm| {
        rm.resource.as_ref() == Some(&origin.resource)
            && rm.schema_url == origin.resource_schema_url
    });
    if !same_resource {
        request.resource_metrics.push(ResourceMetrics {
            resource: Some(origin.resource),
            scope_metrics: Vec::new(),
            schema_url: origin.resource_schema_url,
        });
    }
    let rm = request
        .resource_metrics
        .last_mut()
        .expect("a resource was pushed above");
    let same_scope = rm.scope_metrics.last().is_some_and(|sm| {
        sm.scope.as_ref() == Some(&origin.scope) && sm.schema_url == origin.scope_schema_url
    });
    if !same_scope {
        rm.scope_metrics.push(ScopeMetrics {
            scope: Some(origin.scope),
            metrics: Vec::new(),
            schema_url: origin.scope_schema_url,
        });
    }
    let sm = rm
        .scope_metrics
        .last_mut()
        .expect("a scope was pushed above");
    if let Some(last) = sm.metrics.last_mut()
        && same_metric(last, &metric)
    {
        match (&mut last.data, metric.data) {
            (Some(Data::Gauge(a)), Some(Data::Gauge(b))) => a.data_points.extend(b.data_points),
            (Some(Data::Sum(a)), Some(Data::Sum(b))) => a.data_points.extend(b.data_points),
            (Some(Data::Histogram(a)), Some(Data::Histogram(b))) => {
                a.data_points.extend(b.data_points)
            }
            (Some(Data::ExponentialHistogram(a)), Some(Data::ExponentialHistogram(b))) => {
                a.data_points.extend(b.data_points)
            }
            (Some(Data::Summary(a)), Some(Data::Summary(b))) => a.data_points.extend(b.data_points),
            _ => {}
        }
        return;
    }
    sm.metrics.push(metric);
}

/// Same metric: same identity and the same kind of data with the same aggregation settings.
fn same_metric(a: &Metric, b: &Metric) -> bool {
    if a.name != b.name
        || a.description != b.description
        || a.unit != b.unit
        || a.metadata != b.metadata
    {
        return false;
    }
    match (&a.data, &b.data) {
        (Some(Data::Gauge(_)), Some(Data::Gauge(_))) => true,
        (Some(Data::Sum(x)), Some(Data::Sum(y))) => {
            x.aggregation_temporality == y.aggregation_temporality
                && x.is_monotonic == y.is_monotonic
        }
        (Some(Data::Histogram(x)), Some(Data::Histogram(y))) => {
            x.aggregation_temporality == y.aggregation_temporality
        }
        (Some(Data::ExponentialHistogram(x)), Some(Data::ExponentialHistogram(y))) => {
            x.aggregation_temporality == y.aggregation_temporality
        }
        (Some(Data::Summary(_)), Some(Data::Summary(_))) => true,
        _ => false,
    }
}

fn temporality(dict: &crate::util::DictReader<'_>, i: usize) -> i32 {
    dict.opt(i).and_then(temporality_number).unwrap_or(0)
}

/// Converts batches of the four metric tables back into one OTLP request (points of each
/// table in order, tables in [`Signal::ALL`] order).
pub fn metrics_to_otlp(batches: &[SignalBatch]) -> Result<ExportMetricsServiceRequest, ModelError> {
    let mut request = ExportMetricsServiceRequest::default();
    for sb in batches {
        let batch = &sb.batch;
        let table = sb.signal.table_name();
        let cols = Columns::new(batch, table);
        let head = HeadReader::new(&cols)?;
        match sb.signal {
            Signal::Metrics => {
                let kind = cols.dict("type")?;
                let monotonic: &BooleanArray = cols.get("is_monotonic")?;
                let temp = cols.dict("temporality")?;
                let value: &Float64Array = cols.get("value")?;
                let value_int: &Int64Array = cols.get("value_int")?;
                for i in 0..batch.num_rows() {
                    let h = head.row(i)?;
                    let point = NumberDataPoint {
                        attributes: h.attributes,
                        start_time_unix_nano: h.start_time_unix_nano,
                        time_unix_nano: h.time_unix_nano,
                        exemplars: h.exemplars,
                        flags: h.flags,
                        value: if value_int.is_valid(i) {
                            Some(number_data_point::Value::AsInt(value_int.value(i)))
                        } else if value.is_valid(i) {
                            Some(number_data_point::Value::AsDouble(value.value(i)))
                        } else {
                            None
                        },
                    };
                    let data = if kind.value(i) == METRIC_TYPE_SUM {
                        Data::Sum(Sum {
                            data_points: vec![point],
                            aggregation_temporality: temporality(&temp, i),
                            is_monotonic: monotonic.is_valid(i) && monotonic.value(i),
                        })
                    } else {
                        Data::Gauge(Gauge {
                            data_points: vec![point],
                        })
                    };
                    push_point(
                        &mut request,
                        h.origin,
                        Metric {
                            data: Some(data),
                            ..h.metric
                        },
                    );
                }
            }
            Signal::Histograms => {
                let temp = cols.dict("temporality")?;
                let count: &UInt64Array = cols.get("count")?;
                let sum: &Float64Array = cols.get("sum")?;
                let min: &Float64Array = cols.get("min")?;
                let max: &Float64Array = cols.get("max")?;
                let buckets = cols.list("bucket_counts")?;
                let bounds = cols.list("explicit_bounds")?;
                for i in 0..batch.num_rows() {
                    let h = head.row(i)?;
                    let bounds_row = bounds.value(i);
                    let bounds_row = bounds_row
                        .as_any()
                        .downcast_ref::<Float64Array>()
                        .ok_or_else(|| ModelError::Column {
                            table,
                            column: "explicit_bounds".into(),
                        })?;
                    let point = HistogramDataPoint {
                        attributes: h.attributes,
                        start_time_unix_nano: h.start_time_unix_nano,
                        time_unix_nano: h.time_unix_nano,
                        count: count.value(i),
                        sum: sum.is_valid(i).then(|| sum.value(i)),
                        bucket_counts: u64s(buckets, i, "bucket_counts", table)?,
                        explicit_bounds: bounds_row.values().to_vec(),
                        exemplars: h.exemplars,
                        flags: h.flags,
                        min: min.is_valid(i).then(|| min.value(i)),
                        max: max.is_valid(i).then(|| max.value(i)),
                    };
                    let data = Data::Histogram(Histogram {
                        data_points: vec![point],
                        aggregation_temporality: temporality(&temp, i),
                    });
                    push_point(
                        &mut request,
                        h.origin,
                        Metric {
                            data: Some(data),
                            ..h.metric
                        },
                    );
                }
            }
            Signal::ExpHistograms => {
                let temp = cols.dict("temporality")?;
                let count: &UInt64Array = cols.get("count")?;
                let sum: &Float64Array = cols.get("sum")?;
                let min: &Float64Array = cols.get("min")?;
                let max: &Float64Array = cols.get("max")?;
                let scale: &Int32Array = cols.get("scale")?;
                let zero_count: &UInt64Array = cols.get("zero_count")?;
                let zero_threshold: &Float64Array = cols.get("zero_threshold")?;
                let pos_offset: &Int32Array = cols.get("positive_offset")?;
                let pos = cols.list("positive_bucket_counts")?;
                let neg_offset: &Int32Array = cols.get("negative_offset")?;
                let neg = cols.list("negative_bucket_counts")?;
                for i in 0..batch.num_rows() {
                    let h = head.row(i)?;
                    let buckets = |offset: &Int32Array, list: &ListArray, column: &str| {
                        if offset.is_null(i) {
                            return Ok(None);
                        }
                        Ok::<_, ModelError>(Some(Buckets {
                            offset: offset.value(i),
                            bucket_counts: u64s(list, i, column, table)?,
                        }))
                    };
                    let point = ExponentialHistogramDataPoint {
                        attributes: h.attributes,
                        start_time_unix_nano: h.start_time_unix_nano,
                        time_unix_nano: h.time_unix_nano,
                        count: count.value(i),
                        sum: sum.is_valid(i).then(|| sum.value(i)),
                        scale: scale.value(i),
                        zero_count: zero_count.value(i),
                        positive: buckets(pos_offset, pos, "positive_bucket_counts")?,
                        negative: buckets(neg_offset, neg, "negative_bucket_counts")?,
                        flags: h.flags,
                        exemplars: h.exemplars,
                        min: min.is_valid(i).then(|| min.value(i)),
                        max: max.is_valid(i).then(|| max.value(i)),
                        zero_threshold: zero_threshold.value(i),
                    };
                    let data = Data::ExponentialHistogram(ExponentialHistogram {
                        data_points: vec![point],
                        aggregation_temporality: temporality(&temp, i),
                    });
                    push_point(
                        &mut request,
                        h.origin,
                        Metric {
                            data: Some(data),
                            ..h.metric
                        },
                    );
                }
            }
            Signal::Summaries => {
                let count: &UInt64Array = cols.get("count")?;
                let sum: &Float64Array = cols.get("sum")?;
                let quantiles = cols.list("quantile_values")?;
                let qs = quantiles
                    .values()
                    .as_any()
                    .downcast_ref::<StructArray>()
                    .ok_or_else(|| ModelError::Column {
                        table,
                        column: "quantile_values".into(),
                    })?;
                let q: &Float64Array = child(qs, "quantile", table)?;
                let v: &Float64Array = child(qs, "value", table)?;
                for i in 0..batch.num_rows() {
                    let h = head.row(i)?;
                    let offsets = quantiles.value_offsets();
                    let point = SummaryDataPoint {
                        attributes: h.attributes,
                        start_time_unix_nano: h.start_time_unix_nano,
                        time_unix_nano: h.time_unix_nano,
                        count: count.value(i),
                        sum: sum.value(i),
                        quantile_values: (offsets[i] as usize..offsets[i + 1] as usize)
                            .map(|j| ValueAtQuantile {
                                quantile: q.value(j),
                                value: v.value(j),
                            })
                            .collect(),
                        flags: h.flags,
                    };
                    let data = Data::Summary(Summary {
                        data_points: vec![point],
                    });
                    push_point(
                        &mut request,
                        h.origin,
                        Metric {
                            data: Some(data),
                            ..h.metric
                        },
                    );
                }
            }
            Signal::Spans | Signal::Logs => {
                return Err(ModelError::Column {
                    table,
                    column: "(not a metric table)".into(),
                });
            }
        }
    }
    Ok(request)
}
