//! Writes the seed corpus (`fuzz/corpus/<target>/`): valid inputs of each kind, so the fuzzer
//! starts from what oxeye really receives. `cargo run --bin make_corpus` in `fuzz/`.

use std::path::Path;

use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use futures::TryStreamExt;
use oxeye_model::SignalBatch;
use prost::Message;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed written");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn main() {
    // From cargo's environment at run time, not the path the binary was built at: a target
    // directory may be shared by clones at different paths.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = crate_dir.join("corpus");
    let spans: SignalBatch = oxeye_model::spans::sample_batch(5, 2).expect("sample spans");
    let traces = oxeye_model::spans::spans_to_otlp(std::slice::from_ref(&spans.batch))
        .expect("spans to OTLP");
    let proto = traces.encode_to_vec();
    let json = serde_json::to_vec(&traces).expect("JSON");

    // otlp_request: first byte = signal (bits 3+), compression (bits 1-2), encoding (bit 0).
    let dir = root.join("otlp_request");
    write(&dir, "traces-proto", &[[0u8].as_slice(), &proto].concat());
    write(&dir, "traces-json", &[[1u8].as_slice(), &json].concat());
    write(
        &dir,
        "traces-proto-gzip",
        &[[2u8].as_slice(), &gzip(&proto)].concat(),
    );
    // otlp_http: first byte = path (bits 0-1), content type (2-3), encoding (4-5).
    let dir = root.join("otlp_http");
    write(&dir, "traces-proto", &[[0u8].as_slice(), &proto].concat());
    write(&dir, "traces-json", &[[4u8].as_slice(), &json].concat());
    write(
        &dir,
        "traces-proto-gzip",
        &[[16u8].as_slice(), &gzip(&proto)].concat(),
    );
    // wal_record: one record's payload.
    let record = oxeye_store::wal::encode_record(std::slice::from_ref(&spans)).expect("record");
    write(&root.join("wal_record"), "spans-record", &record);
    write(
        &root.join("wal_record"),
        "spans-framed",
        &oxeye_store::wal::frame(&record),
    );
    // flight_put: first byte = signal (0 = spans), then u16-length-prefixed FlightData.
    let messages: Vec<_> = futures::executor::block_on(
        FlightDataEncoderBuilder::new()
            .with_max_flight_data_size(usize::MAX)
            .with_dictionary_handling(DictionaryHandling::Resend)
            .build(futures::stream::iter([Ok(spans.batch.clone())]))
            .try_collect(),
    )
    .expect("Flight messages");
    let mut put = vec![0u8];
    for m in messages {
        let bytes = m.encode_to_vec();
        if bytes.len() > u16::MAX as usize {
            continue;
        }
        put.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        put.extend_from_slice(&bytes);
    }
    write(&root.join("flight_put"), "spans", &put);
    println!("seed corpus written to {}", root.display());
}
