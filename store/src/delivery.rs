//! Exactly-once delivery from collectors.
//!
//! A collector that queues writes on disk sends each batch with a position in its own stream
//! to a shard: its producer id and a number that only grows (per producer, shard and signal).
//! When an acknowledgement is lost (a store killed after its WAL sync, a connection cut), the
//! collector sends the same batches again. A shard remembers the highest position it holds per
//! producer and signal and drops, and acknowledges, any batch at or below it, so a redelivered
//! batch is stored once.
//!
//! The positions a shard holds travel with its data: in the WAL records that carry the batches
//! (replay rebuilds them) and, once a flush removes those records, in the catalog's checkpoint
//! of the shard, committed in the same step as the segments holding the rows.

use std::collections::BTreeMap;

use oxeye_model::Signal;

use crate::StoreError;

/// Highest position held, per `producer/table`.
pub type Delivered = BTreeMap<String, u64>;

/// Longest producer id a store accepts.
pub const MAX_PRODUCER_LEN: usize = 64;

pub use oxeye_model::ingest::Marks;

/// A producer id is a short token of letters, digits, `-` and `_`.
pub fn check_producer(producer: &str) -> Result<(), StoreError> {
    let ok = !producer.is_empty()
        && producer.len() <= MAX_PRODUCER_LEN
        && producer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            reason: format!(
                "producer id `{}` is not 1 to {MAX_PRODUCER_LEN} letters, digits, `-` or `_`",
                producer.chars().take(80).collect::<String>()
            ),
        })
    }
}

pub fn key(producer: &str, signal: Signal) -> String {
    format!("{producer}/{}", signal.table_name())
}

/// Which of `batches` (signal, position) are new against what `held` holds (every map of it
/// counts), and the positions that writing them adds. A position must also rise within the
/// call: the second of two equal positions is a duplicate too.
pub fn fresh(
    held: &[&Delivered],
    producer: &str,
    batches: &[(Signal, u64)],
) -> (Vec<bool>, Delivered) {
    let mut next = Delivered::new();
    let keep = batches
        .iter()
        .map(|&(signal, position)| {
            let k = key(producer, signal);
            let held = std::iter::once(&next)
                .chain(held.iter().copied())
                .filter_map(|d| d.get(&k))
                .max()
                .copied();
            if held.is_some_and(|h| position <= h) {
                false
            } else {
                next.insert(k, position);
                true
            }
        })
        .collect();
    (keep, next)
}

/// Raises `into` to at least every position of `from`.
pub fn merge(into: &mut Delivered, from: &Delivered) {
    for (k, &v) in from {
        let e = into.entry(k.clone()).or_insert(v);
        *e = (*e).max(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_older_positions_are_duplicates_per_signal() {
        let mut held = Delivered::new();
        let (keep, next) = fresh(
            &[&held],
            "c1",
            &[(Signal::Spans, 10), (Signal::Logs, 3), (Signal::Spans, 11)],
        );
        assert_eq!(keep, vec![true, true, true]);
        merge(&mut held, &next);
        assert_eq!(held["c1/spans"], 11);
        assert_eq!(held["c1/logs"], 3);

        // A redelivery of what is held, plus one new batch of each signal.
        let (keep, next) = fresh(
            &[&held],
            "c1",
            &[
                (Signal::Spans, 10),
                (Signal::Spans, 11),
                (Signal::Logs, 3),
                (Signal::Logs, 4),
                (Signal::Spans, 12),
                (Signal::Spans, 12),
            ],
        );
        assert_eq!(keep, vec![false, false, false, true, true, false]);
        merge(&mut held, &next);
        assert_eq!(held["c1/spans"], 12);
        assert_eq!(held["c1/logs"], 4);

        // Another producer has its own stream.
        let (keep, _) = fresh(&[&held], "c2", &[(Signal::Spans, 1)]);
        assert_eq!(keep, vec![true]);

        // Positions held by an earlier write of the same group count too.
        let group = Delivered::from([("c1/spans".to_string(), 20)]);
        let (keep, _) = fresh(
            &[&held, &group],
            "c1",
            &[(Signal::Spans, 15), (Signal::Spans, 21)],
        );
        assert_eq!(keep, vec![false, true]);
    }

    #[test]
    fn merging_keeps_the_highest_position() {
        let mut a = Delivered::from([("p/spans".to_string(), 5), ("p/logs".to_string(), 9)]);
        merge(
            &mut a,
            &Delivered::from([("p/spans".to_string(), 7), ("p/logs".to_string(), 2)]),
        );
        assert_eq!(a["p/spans"], 7);
        assert_eq!(a["p/logs"], 9);
    }

    #[test]
    fn producer_ids_are_short_tokens() {
        assert!(check_producer("c0ffee-01_x").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(check_producer(bad).is_err(), "{bad}");
        }
    }
}
