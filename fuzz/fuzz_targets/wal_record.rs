//! WAL (and collector queue) records from bytes: the record decoder, and replay of a whole WAL
//! file (framing, checksums, torn tails) with these bytes after the file header. Replay must
//! never fail on content, only cut what it cannot read; what it keeps must encode again.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use oxeye_store::wal;

fuzz_target!(|data: &[u8]| {
    // The WAL reader catches the Arrow IPC reader's panics; libFuzzer's hook would abort first.
    static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    if let Ok(batches) = wal::decode_record(data) {
        let again = wal::encode_record(&batches).expect("decoded batches encode again");
        let back = wal::decode_record(&again).expect("an encoded record decodes");
        assert_eq!(back.len(), batches.len());
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(wal::file_name(1));
    let mut f = std::fs::File::create(&path).expect("a WAL file");
    f.write_all(wal::MAGIC)
        .and_then(|_| f.write_all(data))
        .expect("written");
    drop(f);
    let replayed = wal::replay_file(&path).expect("replay reads any content");
    // Whatever was cut, the file now replays cleanly to the same records.
    let again = wal::replay_file(&path).expect("replay after a cut");
    assert!(
        again.cut.is_none(),
        "a second replay cut again: {:?}",
        again.cut
    );
    assert_eq!(again.records, replayed.records);
});
