//! What a store node takes from a `DoPut`: a stream of Flight messages (here length-prefixed
//! protobuf `FlightData`) decoded into Arrow batches, the store's schema check, and the marked
//! WAL record written for accepted batches, which must decode back to the same rows.
#![no_main]

use arrow_flight::FlightData;
use arrow_flight::error::FlightError;
use futures::{StreamExt, TryStreamExt};
use libfuzzer_sys::fuzz_target;
use oxeye_model::ingest::Marks;
use oxeye_model::{Signal, SignalBatch};
use oxeye_store::{shard, wal};
use prost::Message;

fn messages(mut data: &[u8]) -> Vec<FlightData> {
    let mut out = Vec::new();
    while data.len() >= 2 && out.len() < 64 {
        let len = u16::from_le_bytes([data[0], data[1]]) as usize;
        data = &data[2..];
        let take = len.min(data.len());
        let Ok(m) = FlightData::decode(&data[..take]) else {
            break;
        };
        out.push(m);
        data = &data[take..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let signal = Signal::ALL[pick as usize % Signal::ALL.len()];
    let input = futures::stream::iter(messages(rest).into_iter().map(Ok::<_, FlightError>));
    // The store's own decoder, which turns the IPC reader's panics into errors; libFuzzer's
    // panic hook aborts before any catch, so the default hook is put back first (a panic that
    // escapes is still a crash).
    static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    let decoded = futures::executor::block_on(
        oxeye_flight::decode_batches(input)
            .take(16)
            .try_collect::<Vec<_>>(),
    );
    let Ok(batches) = decoded else {
        return;
    };
    let batches: Vec<SignalBatch> = batches
        .into_iter()
        .map(|b| SignalBatch::new(signal, b))
        .collect();
    if shard::check_schemas(&batches).is_err() || batches.is_empty() {
        return;
    }
    let marks = Marks {
        producer: "fuzz".into(),
        positions: (1..=batches.len() as u64).collect(),
    };
    let record =
        wal::encode_marked_record(&batches, Some(&marks)).expect("accepted batches encode");
    let back = wal::decode_record(&record).expect("a written record decodes");
    assert_eq!(back.len(), batches.len());
    for (a, b) in back.iter().zip(&batches) {
        assert_eq!(a.batch, b.batch);
    }
});
