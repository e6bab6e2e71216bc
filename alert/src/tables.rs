//! The alert history in memory (newest `limit` events and deliveries) and as SQL tables:
//! `alert_events` (state changes) and `alert_notifications` (delivery attempts). Each scan reads
//! the history at that moment.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, MapBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::Result;
use datafusion::datasource::{TableProvider, TableType};
use oxeye_query::system::SnapshotTable;
use parking_lot::Mutex;

use crate::storage::{Delivery, Event};

/// The newest events and deliveries, bounded.
#[derive(Debug, Default)]
pub struct History {
    pub events: VecDeque<Event>,
    pub deliveries: VecDeque<Delivery>,
    pub limit: usize,
}

impl History {
    pub fn push_events(&mut self, events: impl IntoIterator<Item = Event>) {
        for e in events {
            if self.events.len() >= self.limit.max(1) {
                self.events.pop_front();
            }
            self.events.push_back(e);
        }
    }

    pub fn push_delivery(&mut self, d: Delivery) {
        if self.deliveries.len() >= self.limit.max(1) {
            self.deliveries.pop_front();
        }
        self.deliveries.push_back(d);
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn labels_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
}

fn labels_type() -> DataType {
    use arrow::array::Array;
    let mut b = labels_builder();
    b.finish().data_type().clone()
}

fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("time", ts(), false),
        Field::new("rule_id", DataType::Utf8, false),
        Field::new("rule_name", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("fingerprint", DataType::Utf8, false),
        Field::new("labels", labels_type(), false),
        Field::new("from_state", DataType::Utf8, false),
        Field::new("to_state", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
        Field::new("message", DataType::Utf8, true),
    ]))
}

fn time_column(ms: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(ms).with_timezone("UTC"))
}

fn labels_column<'a>(rows: impl Iterator<Item = &'a BTreeMap<String, String>>) -> Result<ArrayRef> {
    let mut b = labels_builder();
    for labels in rows {
        for (k, v) in labels {
            b.keys().append_value(k);
            b.values().append_value(v);
        }
        b.append(true)?;
    }
    Ok(Arc::new(b.finish()))
}

fn events_batch(h: &History) -> Result<RecordBatch> {
    let e = &h.events;
    let columns: Vec<ArrayRef> = vec![
        time_column(e.iter().map(|e| e.time_ms)),
        Arc::new(StringArray::from_iter_values(e.iter().map(|e| &e.rule_id))),
        Arc::new(StringArray::from_iter_values(
            e.iter().map(|e| &e.rule_name),
        )),
        Arc::new(StringArray::from_iter_values(e.iter().map(|e| &e.severity))),
        Arc::new(StringArray::from_iter_values(
            e.iter().map(|e| &e.fingerprint),
        )),
        labels_column(e.iter().map(|e| &e.labels))?,
        Arc::new(StringArray::from_iter_values(
            e.iter().map(|e| e.from.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            e.iter().map(|e| e.to.as_str()),
        )),
        Arc::new(Float64Array::from_iter(e.iter().map(|e| e.value))),
        Arc::new(StringArray::from_iter(
            e.iter().map(|e| e.message.as_deref()),
        )),
    ];
    Ok(RecordBatch::try_new(events_schema(), columns)?)
}

fn deliveries_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("time", ts(), false),
        Field::new("rule_id", DataType::Utf8, false),
        Field::new("rule_name", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("alerts", DataType::UInt64, false),
        Field::new("attempt", DataType::UInt32, false),
        Field::new("ok", DataType::Boolean, false),
        Field::new("error", DataType::Utf8, true),
    ]))
}

fn deliveries_batch(h: &History) -> Result<RecordBatch> {
    let d = &h.deliveries;
    let columns: Vec<ArrayRef> = vec![
        time_column(d.iter().map(|d| d.time_ms)),
        Arc::new(StringArray::from_iter_values(d.iter().map(|d| &d.rule_id))),
        Arc::new(StringArray::from_iter_values(
            d.iter().map(|d| &d.rule_name),
        )),
        Arc::new(StringArray::from_iter_values(d.iter().map(|d| &d.channel))),
        Arc::new(StringArray::from_iter_values(d.iter().map(|d| &d.kind))),
        Arc::new(StringArray::from_iter_values(d.iter().map(|d| &d.status))),
        Arc::new(UInt64Array::from_iter_values(
            d.iter().map(|d| d.alerts as u64),
        )),
        Arc::new(UInt32Array::from_iter_values(d.iter().map(|d| d.attempt))),
        Arc::new(BooleanArray::from_iter(d.iter().map(|d| Some(d.ok)))),
        Arc::new(StringArray::from_iter(d.iter().map(|d| d.error.as_deref()))),
    ];
    Ok(RecordBatch::try_new(deliveries_schema(), columns)?)
}

/// The two tables, named as SQL users see them.
pub fn tables(history: &Arc<Mutex<History>>) -> Vec<(&'static str, Arc<dyn TableProvider>)> {
    let table = |schema: SchemaRef, snapshot: fn(&History) -> Result<RecordBatch>| {
        let history = history.clone();
        Arc::new(SnapshotTable::new(schema, TableType::Base, move || {
            snapshot(&history.lock())
        })) as Arc<dyn TableProvider>
    };
    vec![
        ("alert_events", table(events_schema(), events_batch)),
        (
            "alert_notifications",
            table(deliveries_schema(), deliveries_batch),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EventState;

    #[test]
    fn history_is_bounded_and_builds_batches() {
        let mut h = History {
            limit: 2,
            ..History::default()
        };
        for n in 0..3 {
            h.push_events([Event {
                time_ms: n,
                rule_id: "r".into(),
                rule_name: "rule".into(),
                severity: "warning".into(),
                fingerprint: "f".into(),
                labels: BTreeMap::from([("service_name".to_string(), "a".to_string())]),
                from: EventState::Pending,
                to: EventState::Firing,
                value: Some(1.0),
                message: None,
            }]);
        }
        assert_eq!(h.events.len(), 2);
        let batch = events_batch(&h).expect("batch");
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(deliveries_batch(&h).expect("batch").num_rows(), 0);
    }
}
