//! Attributes as Arrow columns.
//!
//! OTLP attributes are typed (`AnyValue`: string, bool, int, double, bytes, array, kvlist), but
//! SQL users want `attributes['http.request.method'] = 'GET'`. So every attribute list becomes two
//! columns:
//! - `attributes`: `Map<key, text>` with every entry in its original order; strings verbatim,
//!   other kinds rendered as text (ints and doubles as numbers, bytes as base64, arrays and
//!   kvlists as JSON, an empty value as null);
//! - `attributes_typed`: null when every entry was a plain string (the common case), otherwise the
//!   protobuf encoding of [`TypedAttributes`]: for each entry that was not a plain string, its
//!   position and its exact OTLP value. Together the two columns give back the original list.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, MapArray, StringArray, StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::Fields;
use base64::Engine;
use prost::Message;

use crate::ModelError;
use crate::dict::MapKeyEncoder;
use crate::otlp::common::v1::{AnyValue, KeyValue, any_value::Value};
use crate::schema::{attributes_entries_field, map_key_field, map_value_field};
use crate::util::DictReader;

/// One entry that the text map cannot hold exactly.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypedAttribute {
    /// Position of the entry in the attribute list.
    #[prost(uint32, tag = "1")]
    pub index: u32,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
    #[prost(int32, tag = "3")]
    pub key_strindex: i32,
}

/// The `*_typed` sidecar of an attribute map.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypedAttributes {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<TypedAttribute>,
}

/// The string of a key-value whose value is a plain string and nothing else.
fn plain_string(kv: &KeyValue) -> Option<&str> {
    if kv.key_strindex != 0 {
        return None;
    }
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// Text form of an attribute value as SQL shows it; `None` for an empty value.
pub fn value_text(value: &AnyValue) -> Option<String> {
    let mut out = String::new();
    write_value_text(value, &mut out).then_some(out)
}

/// Writes the text form of `value` into `out` (cleared first); false for an empty value.
pub fn write_value_text(value: &AnyValue, out: &mut String) -> bool {
    use std::fmt::Write;
    out.clear();
    match value.value.as_ref() {
        None | Some(Value::StringValueStrindex(_)) => return false,
        Some(Value::StringValue(s)) => out.push_str(s),
        Some(Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Value::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(Value::DoubleValue(d)) => {
            let _ = write!(out, "{d}");
        }
        Some(Value::BytesValue(b)) => {
            base64::engine::general_purpose::STANDARD.encode_string(b, out)
        }
        Some(Value::ArrayValue(_) | Value::KvlistValue(_)) => {
            out.push_str(&value_json(value).to_string())
        }
    }
    true
}

/// A natural JSON form of an attribute value (used for arrays and kvlists, and by the APIs).
pub fn value_json(value: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match value.value.as_ref() {
        None | Some(Value::StringValueStrindex(_)) => J::Null,
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map(J::Number)
            .unwrap_or_else(|| J::String(d.to_string())),
        Some(Value::BytesValue(b)) => {
            J::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Some(Value::ArrayValue(a)) => J::Array(a.values.iter().map(value_json).collect()),
        Some(Value::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|e| {
                    (
                        e.key.clone(),
                        e.value.as_ref().map(value_json).unwrap_or(J::Null),
                    )
                })
                .collect(),
        ),
    }
}

fn values_overflow() -> ModelError {
    ModelError::Column {
        table: "any",
        column: "attribute values over 2 GiB in one batch".into(),
    }
}

/// Text values of a map column, kept in our own buffers so a row can be repeated cheaply.
#[derive(Default)]
struct TextValues {
    bytes: Vec<u8>,
    offsets: Vec<i32>,
    valid: Vec<bool>,
    has_nulls: bool,
}

impl TextValues {
    fn push(&mut self, s: Option<&str>) -> Result<(), ModelError> {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        if let Some(s) = s {
            self.bytes.extend_from_slice(s.as_bytes());
        } else {
            self.has_nulls = true;
        }
        self.valid.push(s.is_some());
        self.offsets
            .push(i32::try_from(self.bytes.len()).map_err(|_| values_overflow())?);
        Ok(())
    }

    /// Appends a copy of entries `from..to`.
    fn repeat(&mut self, from: usize, to: usize) -> Result<(), ModelError> {
        if from >= to {
            return Ok(());
        }
        // One copy of the entries' bytes, then their offsets shifted by how far they moved.
        let (a, b) = (self.offsets[from] as usize, self.offsets[to] as usize);
        let shift = i32::try_from(self.bytes.len() - a).map_err(|_| values_overflow())?;
        self.bytes.extend_from_within(a..b);
        i32::try_from(self.bytes.len()).map_err(|_| values_overflow())?;
        self.offsets.extend_from_within(from + 1..=to);
        let n = self.offsets.len();
        for o in &mut self.offsets[n - (to - from)..] {
            *o += shift;
        }
        self.valid.extend_from_within(from..to);
        Ok(())
    }

    fn finish(&mut self) -> StringArray {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        let nulls = self
            .has_nulls
            .then(|| NullBuffer::from(std::mem::take(&mut self.valid)));
        self.valid.clear();
        self.has_nulls = false;
        let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::take(&mut self.offsets)));
        // Bytes were only ever appended from &str values, whole.
        StringArray::new(offsets, std::mem::take(&mut self.bytes).into(), nulls)
    }
}

/// Builds an attribute map column and its typed sidecar, one row per `append`.
pub struct AttributesBuilder {
    keys: MapKeyEncoder,
    values: TextValues,
    /// Entry offsets of the rows.
    offsets: Vec<i32>,
    typed: BinaryBuilder,
    /// The sidecar of the last row, for `repeat_last`.
    last_typed: Option<Vec<u8>>,
    scratch: Vec<u8>,
    typed_scratch: Vec<TypedAttribute>,
    text_scratch: String,
}

impl Default for AttributesBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl AttributesBuilder {
    pub fn new() -> Self {
        AttributesBuilder {
            keys: MapKeyEncoder::default(),
            values: TextValues::default(),
            offsets: vec![0],
            typed: BinaryBuilder::new(),
            last_typed: None,
            scratch: Vec::new(),
            typed_scratch: Vec::new(),
            text_scratch: String::new(),
        }
    }

    fn close_row(&mut self) -> Result<(), ModelError> {
        self.offsets.push(
            i32::try_from(self.keys.len()).map_err(|_| ModelError::Column {
                table: "any",
                column: "more than 2^31 attributes in one batch".into(),
            })?,
        );
        Ok(())
    }

    pub fn append(&mut self, attributes: &[KeyValue]) -> Result<(), ModelError> {
        let mut typed = std::mem::take(&mut self.typed_scratch);
        typed.clear();
        for (index, kv) in attributes.iter().enumerate() {
            self.keys.append(&kv.key)?;
            match plain_string(kv) {
                Some(s) => self.values.push(Some(s))?,
                None => {
                    let has_text = kv
                        .value
                        .as_ref()
                        .is_some_and(|v| write_value_text(v, &mut self.text_scratch));
                    self.values
                        .push(has_text.then_some(self.text_scratch.as_str()))?;
                    typed.push(TypedAttribute {
                        index: index as u32,
                        value: kv.value.clone(),
                        key_strindex: kv.key_strindex,
                    });
                }
            }
        }
        self.keys.end_list();
        self.close_row()?;
        if typed.is_empty() {
            self.typed.append_null();
            self.last_typed = None;
        } else {
            self.scratch.clear();
            let sidecar = TypedAttributes { entries: typed };
            sidecar
                .encode(&mut self.scratch)
                .map_err(|e| ModelError::Sidecar {
                    column: "attributes_typed".into(),
                    reason: e.to_string(),
                })?;
            typed = sidecar.entries;
            self.typed.append_value(&self.scratch);
            match &mut self.last_typed {
                Some(last) => {
                    last.clear();
                    last.extend_from_slice(&self.scratch);
                }
                None => self.last_typed = Some(self.scratch.clone()),
            }
        }
        self.typed_scratch = typed;
        Ok(())
    }

    /// Appends a copy of the previous row (rows of one resource or scope share its attributes),
    /// without hashing anything. `attributes` must be what the previous row was built from.
    pub fn repeat_last(&mut self, attributes: &[KeyValue]) -> Result<(), ModelError> {
        let n = self.offsets.len();
        if n < 2 {
            return self.append(attributes);
        }
        let (from, to) = (self.offsets[n - 2] as usize, self.offsets[n - 1] as usize);
        debug_assert_eq!(
            to - from,
            attributes.len(),
            "repeat_last of a different list"
        );
        self.keys.repeat_last(to - from);
        self.values.repeat(from, to)?;
        self.close_row()?;
        match &self.last_typed {
            Some(t) => self.typed.append_value(t),
            None => self.typed.append_null(),
        }
        Ok(())
    }

    /// The map column and the sidecar column.
    pub fn finish(&mut self) -> (ArrayRef, ArrayRef) {
        let keys = self.keys.finish();
        let values: ArrayRef = Arc::new(self.values.finish());
        let entries = StructArray::new(
            Fields::from(vec![map_key_field(), map_value_field()]),
            vec![keys, values],
            None,
        );
        let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(
            &mut self.offsets,
            vec![0],
        )));
        // The entries were built to the schema's own field definitions.
        let map = MapArray::new(attributes_entries_field(), offsets, entries, None, false);
        self.last_typed = None;
        (Arc::new(map), Arc::new(self.typed.finish()))
    }
}

/// Reads attribute lists back out of a map column and its sidecar.
pub struct AttributesReader<'a> {
    map: &'a MapArray,
    keys: DictReader<'a>,
    values: &'a StringArray,
    typed: &'a BinaryArray,
    column: &'a str,
}

impl<'a> AttributesReader<'a> {
    pub fn new(
        map: &'a dyn Array,
        typed: &'a dyn Array,
        column: &'a str,
    ) -> Result<Self, ModelError> {
        let bad = || ModelError::Column {
            table: "any",
            column: column.to_string(),
        };
        let map = map.as_any().downcast_ref::<MapArray>().ok_or_else(bad)?;
        let keys = DictReader::new(map.keys().as_ref()).ok_or_else(bad)?;
        let values = map
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(bad)?;
        let typed = typed
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(bad)?;
        Ok(AttributesReader {
            map,
            keys,
            values,
            typed,
            column,
        })
    }

    /// The attribute list of one row.
    pub fn row(&self, row: usize) -> Result<Vec<KeyValue>, ModelError> {
        let offsets = self.map.value_offsets();
        let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
        let mut out = Vec::with_capacity(end - start);
        for i in start..end {
            let value = if self.values.is_null(i) {
                None
            } else {
                Some(AnyValue {
                    value: Some(Value::StringValue(self.values.value(i).to_string())),
                })
            };
            out.push(KeyValue {
                key: self.keys.value(i).to_string(),
                value,
                key_strindex: 0,
            });
        }
        if self.typed.is_valid(row) {
            let typed = TypedAttributes::decode(self.typed.value(row)).map_err(|e| {
                ModelError::Sidecar {
                    column: self.column.to_string(),
                    reason: e.to_string(),
                }
            })?;
            for entry in typed.entries {
                let slot =
                    out.get_mut(entry.index as usize)
                        .ok_or_else(|| ModelError::Sidecar {
                            column: self.column.to_string(),
                            reason: format!(
                                "entry {} beyond the {} attributes",
                                entry.index,
                                end - start
                            ),
                        })?;
                slot.value = entry.value;
                slot.key_strindex = entry.key_strindex;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::common::v1::{ArrayValue, KeyValueList};

    fn kv(key: &str, value: Option<Value>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value }),
            key_strindex: 0,
        }
    }

    #[test]
    fn every_kind_round_trips_and_reads_as_text() {
        let attrs = vec![
            kv("s", Some(Value::StringValue("GET".into()))),
            kv("b", Some(Value::BoolValue(true))),
            kv("i", Some(Value::IntValue(-42))),
            kv("d", Some(Value::DoubleValue(1.5))),
            kv("bytes", Some(Value::BytesValue(vec![0, 1, 255]))),
            kv(
                "arr",
                Some(Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::IntValue(1)),
                    }],
                })),
            ),
            kv(
                "kv",
                Some(Value::KvlistValue(KeyValueList {
                    values: vec![kv("x", Some(Value::StringValue("y".into())))],
                })),
            ),
            kv("empty", None),
            KeyValue {
                key: "absent".into(),
                value: None,
                key_strindex: 0,
            },
        ];
        let mut builder = AttributesBuilder::new();
        builder.append(&attrs).unwrap();
        builder.append(&[]).unwrap();
        builder.append(&attrs[..1]).unwrap();
        let (map, typed) = builder.finish();
        assert_eq!(typed.null_count(), 2, "plain-string rows need no sidecar");
        let reader = AttributesReader::new(map.as_ref(), typed.as_ref(), "attributes").unwrap();
        assert_eq!(reader.row(0).unwrap(), attrs);
        assert_eq!(reader.row(1).unwrap(), vec![]);
        assert_eq!(reader.row(2).unwrap(), attrs[..1].to_vec());

        let map = map.as_any().downcast_ref::<MapArray>().unwrap();
        let values = map.values().as_any().downcast_ref::<StringArray>().unwrap();
        let texts: Vec<Option<&str>> = (0..9)
            .map(|i| values.is_valid(i).then(|| values.value(i)))
            .collect();
        assert_eq!(
            texts,
            vec![
                Some("GET"),
                Some("true"),
                Some("-42"),
                Some("1.5"),
                Some("AAH/"),
                Some("[1]"),
                Some(r#"{"x":"y"}"#),
                None,
                None
            ]
        );
    }
}
