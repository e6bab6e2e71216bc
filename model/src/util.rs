//! Small helpers for building and reading the columns of a batch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, ListArray, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Int32Type};
use arrow::record_batch::RecordBatch;

use crate::ModelError;

/// Reads text from a dictionary-encoded (or plain) string column.
pub struct DictReader<'a> {
    keys: Option<&'a DictionaryArray<Int32Type>>,
    values: &'a StringArray,
}

impl<'a> DictReader<'a> {
    pub fn new(array: &'a dyn Array) -> Option<Self> {
        match array.data_type() {
            DataType::Dictionary(_, _) => {
                let keys = array
                    .as_any()
                    .downcast_ref::<DictionaryArray<Int32Type>>()?;
                let values = keys.values().as_any().downcast_ref::<StringArray>()?;
                Some(DictReader {
                    keys: Some(keys),
                    values,
                })
            }
            DataType::Utf8 => Some(DictReader {
                keys: None,
                values: array.as_any().downcast_ref::<StringArray>()?,
            }),
            _ => None,
        }
    }

    pub fn is_null(&self, i: usize) -> bool {
        match self.keys {
            Some(k) => k.is_null(i),
            None => self.values.is_null(i),
        }
    }

    pub fn value(&self, i: usize) -> &'a str {
        match self.keys {
            Some(k) => self.values.value(k.keys().value(i) as usize),
            None => self.values.value(i),
        }
    }

    pub fn opt(&self, i: usize) -> Option<&'a str> {
        (!self.is_null(i)).then(|| self.value(i))
    }
}

pub type DictBuilder = crate::dict::DictEncoder;

/// Typed access to the columns of one batch, with errors that name the column.
pub struct Columns<'a> {
    pub batch: &'a RecordBatch,
    pub table: &'static str,
}

impl<'a> Columns<'a> {
    pub fn new(batch: &'a RecordBatch, table: &'static str) -> Self {
        Columns { batch, table }
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::Column {
            table: self.table,
            column: name.to_string(),
        }
    }

    pub fn array(&self, name: &str) -> Result<&'a ArrayRef, ModelError> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| self.missing(name))
    }

    pub fn get<T: Array + 'static>(&self, name: &str) -> Result<&'a T, ModelError> {
        self.array(name)?
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| self.missing(name))
    }

    pub fn dict(&self, name: &str) -> Result<DictReader<'a>, ModelError> {
        DictReader::new(self.array(name)?.as_ref()).ok_or_else(|| self.missing(name))
    }

    #[allow(dead_code)]
    pub fn primitive<T: arrow::datatypes::ArrowPrimitiveType>(
        &self,
        name: &str,
    ) -> Result<&'a arrow::array::PrimitiveArray<T>, ModelError> {
        self.array(name)?
            .as_primitive_opt::<T>()
            .ok_or_else(|| self.missing(name))
    }

    pub fn list(&self, name: &str) -> Result<&'a ListArray, ModelError> {
        self.array(name)?
            .as_list_opt::<i32>()
            .ok_or_else(|| self.missing(name))
    }
}

/// Collects the offsets of a list column while its child values are built elsewhere.
pub struct ListOffsets {
    offsets: Vec<i32>,
}

impl Default for ListOffsets {
    fn default() -> Self {
        ListOffsets { offsets: vec![0] }
    }
}

impl ListOffsets {
    /// Closes one row whose list now ends at `child_len` children.
    pub fn push(&mut self, child_len: usize) {
        self.offsets.push(child_len as i32);
    }

    pub fn finish(&mut self, item: Arc<Field>, values: ArrayRef) -> ArrayRef {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        Arc::new(ListArray::new(
            item,
            OffsetBuffer::new(offsets.into()),
            values,
            None,
        ))
    }
}

/// Converts an OTLP u64 nanosecond time to Arrow's i64, bit for bit (times after 2262 wrap,
/// and come back unchanged).
#[inline]
pub fn nanos(t: u64) -> i64 {
    t as i64
}

#[inline]
pub fn unnanos(t: i64) -> u64 {
    t as u64
}
