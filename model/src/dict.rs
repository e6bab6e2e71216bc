//! Dictionary encoding for text that repeats: service names, span and metric names, attribute
//! keys. Rows of one resource, scope or metric arrive together, so most values equal the value
//! one row (or one attribute list) earlier; comparing with that is much cheaper than hashing,
//! and hashing is only done for a new value.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, DictionaryArray, Int32Array, StringArray};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::Int32Type;

use crate::ModelError;

/// Distinct strings, each with its key.
#[derive(Default)]
struct Values {
    index: HashMap<Box<str>, i32, foldhash::fast::FixedState>,
    bytes: Vec<u8>,
    offsets: Vec<i32>,
}

impl Values {
    /// Whether value `key` is `s` (a byte comparison: cheaper than hashing `s`).
    fn is(&self, key: i32, s: &str) -> bool {
        let k = key as usize;
        match (self.offsets.get(k), self.offsets.get(k + 1)) {
            (Some(a), Some(b)) => &self.bytes[*a as usize..*b as usize] == s.as_bytes(),
            _ => false,
        }
    }

    fn key_of(&mut self, s: &str) -> Result<i32, ModelError> {
        if let Some(k) = self.index.get(s) {
            return Ok(*k);
        }
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        let key = i32::try_from(self.offsets.len() - 1).map_err(|_| overflow())?;
        self.bytes.extend_from_slice(s.as_bytes());
        self.offsets
            .push(i32::try_from(self.bytes.len()).map_err(|_| overflow())?);
        self.index.insert(s.into(), key);
        Ok(key)
    }

    fn finish(&mut self) -> StringArray {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::take(&mut self.offsets)));
        let bytes = std::mem::take(&mut self.bytes);
        self.index.clear();
        // Offsets and bytes were built together from &str values.
        StringArray::new(offsets, bytes.into(), None)
    }
}

fn overflow() -> ModelError {
    ModelError::Column {
        table: "any",
        column: "dictionary with more than 2^31 bytes or values in one batch".into(),
    }
}

/// A `Dictionary<Int32, Utf8>` column.
#[derive(Default)]
pub struct DictEncoder {
    values: Values,
    keys: Vec<i32>,
    valid: Vec<bool>,
    has_nulls: bool,
    last: Option<i32>,
}

impl DictEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn append_value(&mut self, s: impl AsRef<str>) -> Result<(), ModelError> {
        let s = s.as_ref();
        let key = match self.last {
            Some(k) if self.values.is(k, s) => k,
            _ => {
                let k = self.values.key_of(s)?;
                self.last = Some(k);
                k
            }
        };
        self.keys.push(key);
        self.valid.push(true);
        Ok(())
    }

    /// Appends the previous value again (the caller knows it is the same); a null when
    /// there is none.
    pub fn repeat_last(&mut self) {
        match self.keys.last().copied().zip(self.valid.last().copied()) {
            Some((k, true)) => {
                self.keys.push(k);
                self.valid.push(true);
            }
            _ => self.append_null(),
        }
    }

    pub fn append_null(&mut self) {
        self.keys.push(0);
        self.valid.push(false);
        self.has_nulls = true;
    }

    pub fn append_option(&mut self, s: Option<&str>) -> Result<(), ModelError> {
        match s {
            Some(s) => self.append_value(s),
            None => {
                self.append_null();
                Ok(())
            }
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        let nulls = self
            .has_nulls
            .then(|| NullBuffer::from(std::mem::take(&mut self.valid)));
        self.valid.clear();
        self.has_nulls = false;
        self.last = None;
        let keys = Int32Array::new(ScalarBuffer::from(std::mem::take(&mut self.keys)), nulls);
        let values = self.values.finish();
        // Every key was issued by `values` for this batch.
        Arc::new(DictionaryArray::<Int32Type>::new(keys, Arc::new(values)))
    }
}

/// The keys of an attribute map column: dictionary-encoded, and compared first with the key at
/// the same position in the previous list (attribute lists of one kind repeat their keys).
#[derive(Default)]
pub struct MapKeyEncoder {
    values: Values,
    keys: Vec<i32>,
    /// Keys of the previous list, by position.
    previous: Vec<i32>,
    current: Vec<i32>,
}

impl MapKeyEncoder {
    pub fn append(&mut self, s: &str) -> Result<(), ModelError> {
        let pos = self.current.len();
        let key = match self.previous.get(pos) {
            Some(k) if self.values.is(*k, s) => *k,
            _ => self.values.key_of(s)?,
        };
        self.current.push(key);
        self.keys.push(key);
        Ok(())
    }

    /// Appends again the last `n` keys (the previous list, which the caller knows repeats).
    pub fn repeat_last(&mut self, n: usize) {
        let len = self.keys.len();
        self.keys.extend_from_within(len - n.min(len)..len);
    }

    /// Ends one attribute list.
    pub fn end_list(&mut self) {
        if !self.current.is_empty() {
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn finish(&mut self) -> ArrayRef {
        self.previous.clear();
        self.current.clear();
        let keys = Int32Array::new(ScalarBuffer::from(std::mem::take(&mut self.keys)), None);
        Arc::new(DictionaryArray::<Int32Type>::new(
            keys,
            Arc::new(self.values.finish()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    fn texts(a: &ArrayRef) -> Vec<Option<String>> {
        let d = a.as_dictionary::<Int32Type>();
        let v = d.values().as_string::<i32>();
        (0..d.len())
            .map(|i| {
                d.is_valid(i)
                    .then(|| v.value(d.keys().value(i) as usize).to_string())
            })
            .collect()
    }

    #[test]
    fn encodes_repeats_and_new_values() {
        let mut e = DictEncoder::new();
        for s in ["a", "a", "b", "a", "", "b"] {
            e.append_value(s).unwrap();
        }
        e.append_null();
        let a = e.finish();
        assert_eq!(
            texts(&a),
            vec![
                Some("a".into()),
                Some("a".into()),
                Some("b".into()),
                Some("a".into()),
                Some("".into()),
                Some("b".into()),
                None
            ]
        );
        assert_eq!(
            a.as_dictionary::<Int32Type>().values().len(),
            3,
            "each distinct value once"
        );
        // Reusable after finish.
        e.append_value("z").unwrap();
        assert_eq!(texts(&e.finish()), vec![Some("z".into())]);
    }

    #[test]
    fn map_keys_reuse_the_previous_list() {
        let mut k = MapKeyEncoder::default();
        for list in [&["x", "y"][..], &["x", "y"], &["y", "x", "z"], &[]] {
            for s in list {
                k.append(s).unwrap();
            }
            k.end_list();
        }
        let a = k.finish();
        let got: Vec<String> = texts(&a).into_iter().flatten().collect();
        assert_eq!(got, vec!["x", "y", "x", "y", "y", "x", "z"]);
    }
}
