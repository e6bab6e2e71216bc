//! Routing of rows to store shards (DESIGN.md, write path step 2).
//!
//! Each row gets a shard key hash: the trace id for spans (a whole trace lands on one shard),
//! `(service_name, hour)` for logs, and the series identity (name, service, attributes) for
//! metric points. Rendezvous hashing over the shard map picks the shard, so adding a shard moves
//! only the keys that now score highest on it. A single node is a cluster of one shard; the same
//! code runs, it just finds that every row belongs to shard 0.

use std::hash::Hasher;
use std::sync::Arc;

use arrow::array::{Array, AsArray, FixedSizeBinaryArray, MapArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{Int32Type, TimestampNanosecondType};
use futures::future::try_join_all;
use oxeye_model::ingest::{Ingest, IngestError};
use oxeye_model::{Signal, SignalBatch};
use twox_hash::XxHash64;

/// Seed of every shard-key hash. Changing it re-routes everything: it is part of the cluster's
/// on-the-wire contract.
const KEY_SEED: u64 = 0x6f78_6579_655f_6b31; // "oxeye_k1"

/// Logs of one service are spread over shards by hour-long buckets.
const LOG_BUCKET_NANOS: i64 = 3_600_000_000_000;

/// One shard-key hash per row of `batch`.
pub fn shard_key_hashes(batch: &SignalBatch) -> Vec<u64> {
    let b = &batch.batch;
    let rows = b.num_rows();
    match batch.signal {
        Signal::Spans => {
            let ids = b
                .column_by_name("trace_id")
                .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>());
            match ids {
                Some(ids) => (0..rows).map(|i| hash_bytes(ids.value(i))).collect(),
                None => vec![0; rows],
            }
        }
        Signal::Logs => {
            let services = dict_key_hashes(b.column_by_name("service_name").map(|c| c.as_ref()));
            let times = b
                .column_by_name("time")
                .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>());
            (0..rows)
                .map(|i| {
                    let mut h = XxHash64::with_seed(KEY_SEED);
                    h.write_u64(services.as_ref().map(|s| s(i)).unwrap_or(0));
                    h.write_i64(
                        times
                            .map(|t| t.value(i).div_euclid(LOG_BUCKET_NANOS))
                            .unwrap_or(0),
                    );
                    h.finish()
                })
                .collect()
        }
        _ => {
            let names = dict_key_hashes(b.column_by_name("name").map(|c| c.as_ref()));
            let services = dict_key_hashes(b.column_by_name("service_name").map(|c| c.as_ref()));
            let attrs = b.column_by_name("attributes").and_then(|c| c.as_map_opt());
            (0..rows)
                .map(|i| {
                    let mut h = XxHash64::with_seed(KEY_SEED);
                    h.write_u64(names.as_ref().map(|s| s(i)).unwrap_or(0));
                    h.write_u64(services.as_ref().map(|s| s(i)).unwrap_or(0));
                    if let Some(m) = attrs {
                        hash_map_row(&mut h, m, i);
                    }
                    h.finish()
                })
                .collect()
        }
    }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    XxHash64::oneshot(KEY_SEED, bytes)
}

/// For a dictionary string column, hashes each distinct value once and returns a per-row lookup.
fn dict_key_hashes(array: Option<&dyn Array>) -> Option<impl Fn(usize) -> u64 + '_> {
    let dict = array?.as_dictionary_opt::<Int32Type>()?;
    let values = dict.values().as_string_opt::<i32>()?;
    let value_hashes: Vec<u64> = (0..values.len())
        .map(|i| hash_bytes(values.value(i).as_bytes()))
        .collect();
    let keys = dict.keys();
    Some(move |row: usize| {
        if keys.is_null(row) {
            0
        } else {
            value_hashes
                .get(keys.value(row) as usize)
                .copied()
                .unwrap_or(0)
        }
    })
}

fn hash_map_row(h: &mut XxHash64, map: &MapArray, row: usize) {
    let offsets = map.value_offsets();
    let keys = map.keys().as_dictionary_opt::<Int32Type>();
    let key_values = keys.and_then(|k| k.values().as_string_opt::<i32>());
    let values = map.values().as_string_opt::<i32>();
    for i in offsets[row] as usize..offsets[row + 1] as usize {
        if let (Some(k), Some(kv)) = (keys, key_values) {
            h.write(kv.value(k.keys().value(i) as usize).as_bytes());
        }
        h.write_u8(0xff);
        if let Some(v) = values
            && v.is_valid(i)
        {
            h.write(v.value(i).as_bytes());
        }
        h.write_u8(0xfe);
    }
}

/// Mixes a key hash with a shard's id into the rendezvous score (splitmix64's finaliser).
fn score(key: u64, shard: u32) -> u64 {
    let mut z = key ^ (u64::from(shard).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The position in `shards` (shard ids) that owns `key`: the highest rendezvous score wins.
pub fn owner(key: u64, shards: &[u32]) -> usize {
    let mut best = 0;
    let mut best_score = 0;
    for (pos, id) in shards.iter().enumerate() {
        let s = score(key, *id);
        if pos == 0 || s > best_score {
            best = pos;
            best_score = s;
        }
    }
    best
}

/// Splits a batch into one batch per shard position (empty shards are left out).
pub fn split_by_shard(
    batch: &SignalBatch,
    shards: &[u32],
) -> Result<Vec<(usize, SignalBatch)>, IngestError> {
    if shards.len() <= 1 {
        return Ok(vec![(0, batch.clone())]);
    }
    let keys = shard_key_hashes(batch);
    let mut rows_of: Vec<Vec<u32>> = vec![Vec::new(); shards.len()];
    for (row, key) in keys.into_iter().enumerate() {
        rows_of[owner(key, shards)].push(row as u32);
    }
    let mut out = Vec::new();
    for (pos, rows) in rows_of.into_iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let indices = UInt32Array::from(rows);
        let part =
            take_record_batch(&batch.batch, &indices).map_err(|e| IngestError::Rejected {
                reason: format!("cannot split a {} batch by shard: {e}", batch.signal),
            })?;
        out.push((pos, SignalBatch::new(batch.signal, part)));
    }
    Ok(out)
}

/// A shard as the router sees it.
pub struct ShardTarget {
    pub id: u32,
    pub sink: Arc<dyn Ingest>,
}

/// Routes every row to the shard that owns its key and acknowledges once every shard has.
pub struct ShardRouter {
    shards: Vec<ShardTarget>,
    ids: Vec<u32>,
}

impl ShardRouter {
    pub fn new(shards: Vec<ShardTarget>) -> Self {
        let ids = shards.iter().map(|s| s.id).collect();
        ShardRouter { shards, ids }
    }
}

#[async_trait::async_trait]
impl Ingest for ShardRouter {
    async fn ingest(&self, batches: Vec<SignalBatch>) -> Result<(), IngestError> {
        if self.shards.is_empty() {
            return Err(IngestError::Unavailable {
                reason: "no store shard is configured".into(),
                retry_after: std::time::Duration::from_secs(1),
            });
        }
        let mut per_shard: Vec<Vec<SignalBatch>> = vec![Vec::new(); self.shards.len()];
        for batch in &batches {
            for (pos, part) in split_by_shard(batch, &self.ids)? {
                per_shard[pos].push(part);
            }
        }
        try_join_all(
            per_shard
                .into_iter()
                .enumerate()
                .filter(|(_, b)| !b.is_empty())
                .map(|(pos, b)| self.shards[pos].sink.ingest(b)),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(traces: u8, spans_per_trace: u8) -> SignalBatch {
        oxeye_model::spans::sample_batch(traces, spans_per_trace).unwrap()
    }

    #[test]
    fn a_trace_lands_on_one_shard_and_rows_are_kept() {
        let b = batch(50, 4);
        let parts = split_by_shard(&b, &[10, 11, 12]).unwrap();
        assert_eq!(parts.iter().map(|(_, p)| p.num_rows()).sum::<usize>(), 200);
        assert!(parts.len() > 1, "50 traces should spread over 3 shards");
        for (_, p) in &parts {
            let ids = p.batch.column_by_name("trace_id").unwrap();
            let ids = ids.as_any().downcast_ref::<FixedSizeBinaryArray>().unwrap();
            for i in 0..ids.len() {
                let owner_pos = owner(hash_bytes(ids.value(i)), &[10, 11, 12]);
                assert!(
                    parts
                        .iter()
                        .any(|(pos, q)| *pos == owner_pos && std::ptr::eq(q, p))
                );
            }
        }
    }

    #[test]
    fn adding_a_shard_moves_only_keys_it_wins() {
        let before = [1, 2, 3];
        let after = [1, 2, 3, 4];
        let mut moved = 0;
        for k in 0..10_000u64 {
            let key = hash_bytes(&k.to_le_bytes());
            let a = before[owner(key, &before)];
            let b = after[owner(key, &after)];
            if a != b {
                assert_eq!(b, 4, "a key may only move to the new shard");
                moved += 1;
            }
        }
        assert!(
            (1500..3500).contains(&moved),
            "about a quarter should move, moved {moved}"
        );
    }

    #[test]
    fn one_shard_takes_everything() {
        let b = batch(3, 2);
        let parts = split_by_shard(&b, &[7]).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].1.num_rows(), 6);
    }
}
