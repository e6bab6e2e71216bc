//! Write-ahead log of one shard.
//!
//! # Format (version 1)
//! A WAL is a directory of files named `{seq:020}.wal`, seq increasing. Each file starts with
//! the 8-byte magic `OXWAL001`, followed by records:
//!
//! ```text
//! u32 LE  payload length (bytes)
//! u32 LE  CRC-32 (IEEE) of the payload
//! payload:
//!   u8      record kind (1 = ingest call, 2 = ingest call with delivery marks)
//!   kind 2 only: u8 producer id length, producer id (ASCII)
//!   u16 LE  number of batches
//!   per batch: u8 signal code, kind 2 only: u64 LE position,
//!              u32 LE length, Arrow IPC stream (schema + one batch)
//! ```
//!
//! Kind 2 records carry where each batch stands in its collector's stream (see `delivery`), so
//! replay restores which positions the shard holds along with the rows.
//!
//! One record holds everything one `ingest` call wrote, so a torn write drops a whole call and
//! never half of one. Replay reads records until the first one that is short or fails its
//! checksum; that tail is reported and cut off. Files are deleted only after the catalog says
//! their data is in committed segments (see `shard.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use arrow::ipc::writer::StreamWriter;
use oxeye_model::{Signal, SignalBatch};

use crate::StoreError;
use crate::delivery::{self, Delivered, Marks};

pub const MAGIC: &[u8; 8] = b"OXWAL001";
const RECORD_KIND_INGEST: u8 = 1;
const RECORD_KIND_MARKED_INGEST: u8 = 2;
/// Largest record replay will believe; a bigger length field is corruption.
const MAX_RECORD_BYTES: u32 = 1 << 30;

/// Encodes the payload of one record.
pub fn encode_record(batches: &[SignalBatch]) -> Result<Vec<u8>, StoreError> {
    encode_marked_record(batches, None)
}

/// Encodes the payload of one record whose batches carry delivery marks (when `marks` is set).
pub fn encode_marked_record(
    batches: &[SignalBatch],
    marks: Option<&Marks>,
) -> Result<Vec<u8>, StoreError> {
    let mut payload =
        Vec::with_capacity(batches.iter().map(|b| b.memory_size()).sum::<usize>() + 16);
    let count = u16::try_from(batches.len()).map_err(|_| StoreError::Invalid {
        reason: format!("{} batches in one write; at most 65535", batches.len()),
    })?;
    match marks {
        None => payload.push(RECORD_KIND_INGEST),
        Some(m) => {
            if m.positions.len() != batches.len() {
                return Err(StoreError::Invalid {
                    reason: format!(
                        "{} delivery positions for {} batches",
                        m.positions.len(),
                        batches.len()
                    ),
                });
            }
            delivery::check_producer(&m.producer)?;
            payload.push(RECORD_KIND_MARKED_INGEST);
            payload.push(m.producer.len() as u8);
            payload.extend_from_slice(m.producer.as_bytes());
        }
    }
    payload.extend_from_slice(&count.to_le_bytes());
    for (i, b) in batches.iter().enumerate() {
        payload.push(b.signal.code());
        if let Some(m) = marks {
            payload.extend_from_slice(&m.positions[i].to_le_bytes());
        }
        let len_at = payload.len();
        payload.extend_from_slice(&[0u8; 4]);
        {
            let mut w = StreamWriter::try_new(&mut payload, &b.batch.schema())
                .map_err(|e| StoreError::arrow("encoding a WAL record", e))?;
            w.write(&b.batch)
                .map_err(|e| StoreError::arrow("encoding a WAL record", e))?;
            w.finish()
                .map_err(|e| StoreError::arrow("encoding a WAL record", e))?;
        }
        let len = u32::try_from(payload.len() - len_at - 4).map_err(|_| StoreError::Invalid {
            reason: "a batch larger than 4 GiB cannot be written to the WAL".into(),
        })?;
        payload[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(payload)
}

/// Decodes a record payload back into batches (delivery marks, if any, are dropped).
pub fn decode_record(payload: &[u8]) -> Result<Vec<SignalBatch>, String> {
    parse_record(payload).map(|(batches, _)| batches)
}

/// Frames a payload: length, checksum, payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn file_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// Sequence numbers of the WAL files in `dir`, ascending.
pub fn list(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(seqs),
        Err(e) => return Err(StoreError::io("listing the WAL directory", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("listing the WAL directory", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_suffix(".wal")
            .and_then(|s| s.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// What replaying one file found.
#[derive(Debug, Default)]
pub struct Replayed {
    pub batches: Vec<SignalBatch>,
    /// The highest delivery position of each producer and signal the file holds.
    pub delivered: Delivered,
    pub records: u64,
    /// Batches left out because the positions they carry were already flushed (see
    /// [`replay_file_except`]).
    pub skipped: usize,
    /// Whether the file holds a record without delivery marks (written in-process, not by a
    /// collector), which positions cannot tell apart from flushed ones.
    pub unmarked: bool,
    /// Set when the file had a torn or corrupt tail, which has been cut off.
    pub cut: Option<CutTail>,
}

#[derive(Debug, Clone)]
pub struct CutTail {
    pub offset: u64,
    pub dropped_bytes: u64,
    pub reason: String,
}

/// Reads every intact record of a WAL file; a bad tail is truncated away (and reported).
pub fn replay_file(path: &Path) -> Result<Replayed, StoreError> {
    replay_file_except(path, &Delivered::new())
}

/// Like [`replay_file`], but leaves out the batches whose delivery position `flushed` covers:
/// a shard replica taking over replays its WAL except what the previous leader flushed.
/// Positions still count in [`Replayed::delivered`].
pub fn replay_file_except(path: &Path, flushed: &Delivered) -> Result<Replayed, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io("opening a WAL file for replay", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| StoreError::io("reading WAL file size", path, e))?
        .len();
    let mut reader = BufReader::new(&file);
    let mut out = Replayed::default();
    let mut magic = [0u8; 8];
    let cut = |offset: u64, reason: String| CutTail {
        offset,
        dropped_bytes: len - offset,
        reason,
    };
    if len < 8 || reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
        out.cut = Some(cut(0, "missing or wrong file header".into()));
    } else {
        let mut offset: u64 = 8;
        loop {
            if offset == len {
                break;
            }
            let mut header = [0u8; 8];
            if reader.read_exact(&mut header).is_err() {
                out.cut = Some(cut(offset, "torn record header".into()));
                break;
            }
            let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if size > MAX_RECORD_BYTES || offset + 8 + u64::from(size) > len {
                out.cut = Some(cut(
                    offset,
                    format!("record of {size} bytes runs past the end of the file"),
                ));
                break;
            }
            let mut payload = vec![0u8; size as usize];
            if reader.read_exact(&mut payload).is_err() {
                out.cut = Some(cut(offset, "torn record payload".into()));
                break;
            }
            if crc32fast::hash(&payload) != crc {
                out.cut = Some(cut(offset, "checksum mismatch".into()));
                break;
            }
            match parse_record(&payload) {
                Ok((batches, marks)) => match marks {
                    Some(m) => {
                        for (batch, position) in batches.into_iter().zip(m.positions) {
                            let key = delivery::key(&m.producer, batch.signal);
                            if flushed.get(&key).is_some_and(|f| position <= *f) {
                                out.skipped += 1;
                            } else {
                                out.batches.push(batch);
                            }
                            let e = out.delivered.entry(key).or_insert(position);
                            *e = (*e).max(position);
                        }
                    }
                    None => {
                        out.unmarked = true;
                        out.batches.extend(batches)
                    }
                },
                Err(reason) => {
                    out.cut = Some(cut(offset, format!("undecodable record: {reason}")));
                    break;
                }
            }
            out.records += 1;
            offset += 8 + u64::from(size);
        }
    }
    drop(reader);
    if let Some(c) = &out.cut {
        // Cut the bad tail so that new records never follow garbage. The header is rewritten
        // when it was the broken part.
        file.set_len(c.offset)
            .map_err(|e| StoreError::io("truncating a corrupt WAL tail", path, e))?;
        if c.offset == 0 {
            let mut f = &file;
            f.seek(SeekFrom::Start(0))
                .and_then(|_| f.write_all(MAGIC))
                .map_err(|e| StoreError::io("rewriting a WAL header", path, e))?;
        }
        file.sync_all()
            .map_err(|e| StoreError::io("syncing a truncated WAL file", path, e))?;
    }
    Ok(out)
}

/// A record's batches and, for kind 2, their delivery marks.
fn parse_record(payload: &[u8]) -> Result<(Vec<SignalBatch>, Option<Marks>), String> {
    let mut pos = 0usize;
    let need = |pos: usize, n: usize| -> Result<(), String> {
        if payload.len() < pos + n {
            Err(format!("record ends early at byte {pos}"))
        } else {
            Ok(())
        }
    };
    need(pos, 1)?;
    let kind = payload[0];
    pos += 1;
    let producer = match kind {
        RECORD_KIND_INGEST => None,
        RECORD_KIND_MARKED_INGEST => {
            need(pos, 1)?;
            let len = payload[pos] as usize;
            pos += 1;
            need(pos, len)?;
            let p = std::str::from_utf8(&payload[pos..pos + len])
                .map_err(|_| "a producer id that is not text".to_string())?;
            pos += len;
            Some(p.to_string())
        }
        other => return Err(format!("unknown record kind {other}")),
    };
    need(pos, 2)?;
    let count = u16::from_le_bytes([payload[pos], payload[pos + 1]]) as usize;
    pos += 2;
    let mut out = Vec::with_capacity(count);
    let mut positions = Vec::with_capacity(if producer.is_some() { count } else { 0 });
    for _ in 0..count {
        need(pos, 1)?;
        let code = payload[pos];
        let signal =
            Signal::from_code(code).ok_or_else(|| format!("unknown signal code {code}"))?;
        if producer.is_some() {
            need(pos + 1, 8)?;
            let mut p = [0u8; 8];
            p.copy_from_slice(&payload[pos + 1..pos + 9]);
            positions.push(u64::from_le_bytes(p));
            pos += 8;
        }
        need(pos, 5)?;
        let len = u32::from_le_bytes([
            payload[pos + 1],
            payload[pos + 2],
            payload[pos + 3],
            payload[pos + 4],
        ]) as usize;
        pos += 5;
        need(pos, len)?;
        for batch in read_ipc(&payload[pos..pos + len])? {
            if batch.schema().fields() != signal.schema().fields() {
                return Err(format!("a {signal} batch with a different schema"));
            }
            out.push(SignalBatch::new(signal, batch));
        }
        pos += len;
    }
    if producer.is_some() && out.len() != count {
        return Err(format!(
            "{} batches for {count} delivery positions",
            out.len()
        ));
    }
    let marks = producer.map(|p| Marks {
        producer: p.into(),
        positions,
    });
    Ok((out, marks))
}

/// The batches of one Arrow IPC stream. Arrow's `StreamReader` allocates a message body of the
/// size the message declares before reading it (a damaged length asks for exabytes and aborts
/// the process, found by `fuzz/fuzz_targets/wal_record.rs`), and its decoder panics on some
/// malformed input (see `oxeye_flight::decode_batches`). The push decoder takes only the bytes
/// that are there, and a panic reads as damage.
fn read_ipc(bytes: &[u8]) -> Result<Vec<arrow::record_batch::RecordBatch>, String> {
    std::panic::catch_unwind(|| {
        let mut decoder = arrow::ipc::reader::StreamDecoder::new();
        let mut buffer = arrow::buffer::Buffer::from(bytes.to_vec());
        let mut out = Vec::new();
        while !buffer.is_empty() {
            let before = buffer.len();
            if let Some(batch) = decoder.decode(&mut buffer).map_err(|e| e.to_string())? {
                out.push(batch);
            }
            if buffer.len() == before {
                return Err("an Arrow IPC stream that does not advance".to_string());
            }
        }
        decoder.finish().map_err(|e| e.to_string())?;
        Ok(out)
    })
    .unwrap_or_else(|_| Err("a malformed Arrow IPC stream".into()))
}

/// An open WAL file being appended to.
pub struct WalFile {
    pub seq: u64,
    path: PathBuf,
    file: File,
    len: u64,
}

impl WalFile {
    /// Creates a new, empty WAL file (its header is synced with the directory entry).
    pub fn create(dir: &Path, seq: u64) -> Result<WalFile, StoreError> {
        fs::create_dir_all(dir)
            .map_err(|e| StoreError::io("creating the WAL directory", dir, e))?;
        let path = dir.join(file_name(seq));
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("creating a WAL file", &path, e))?;
        file.write_all(MAGIC)
            .and_then(|_| file.sync_all())
            .map_err(|e| StoreError::io("writing a WAL header", &path, e))?;
        sync_dir(dir)?;
        Ok(WalFile {
            seq,
            path,
            file,
            len: MAGIC.len() as u64,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= MAGIC.len() as u64
    }

    /// Appends framed records and makes them durable with one fsync. On failure the file is cut
    /// back to where it was, so a failed group leaves no partial record behind.
    pub fn append_durably(&mut self, framed: &[Vec<u8>]) -> Result<(), StoreError> {
        let before = self.len;
        let result = (|| -> io::Result<u64> {
            let mut written = 0u64;
            for f in framed {
                self.file.write_all(f)?;
                written += f.len() as u64;
            }
            self.file.sync_data()?;
            Ok(written)
        })();
        match result {
            Ok(written) => {
                self.len += written;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(before);
                let _ = self.file.seek(SeekFrom::Start(before));
                Err(StoreError::io("appending to the WAL", &self.path, e))
            }
        }
    }
}

pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("syncing a directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::spans_batch;

    fn write(dir: &Path, seq: u64, records: &[Vec<SignalBatch>]) -> PathBuf {
        let mut f = WalFile::create(dir, seq).unwrap();
        let framed: Vec<_> = records
            .iter()
            .map(|r| frame(&encode_record(r).unwrap()))
            .collect();
        f.append_durably(&framed).unwrap();
        dir.join(file_name(seq))
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let a = spans_batch(0, 5);
        let b = spans_batch(100, 3);
        let path = write(
            dir.path(),
            1,
            &[vec![a.clone()], vec![b.clone(), a.clone()]],
        );
        let r = replay_file(&path).unwrap();
        assert!(r.cut.is_none());
        assert_eq!(r.records, 2);
        let rows: Vec<usize> = r.batches.iter().map(|b| b.num_rows()).collect();
        assert_eq!(rows, vec![5, 3, 5]);
        assert_eq!(r.batches[1].batch, b.batch);
        assert_eq!(list(dir.path()).unwrap(), vec![1]);
    }

    #[test]
    fn marked_records_bring_back_their_positions() {
        let dir = tempfile::tempdir().unwrap();
        let a = spans_batch(0, 2);
        let marks = Marks {
            producer: "c1".into(),
            positions: vec![(7 << 16) | 1, 9 << 16],
        };
        let mut f = WalFile::create(dir.path(), 1).unwrap();
        let framed = vec![
            frame(&encode_record(std::slice::from_ref(&a)).unwrap()),
            frame(&encode_marked_record(&[a.clone(), a.clone()], Some(&marks)).unwrap()),
        ];
        f.append_durably(&framed).unwrap();
        let r = replay_file(&dir.path().join(file_name(1))).unwrap();
        assert!(r.cut.is_none());
        assert_eq!(r.batches.len(), 3);
        assert_eq!(
            r.delivered,
            Delivered::from([("c1/spans".to_string(), 9 << 16)])
        );
        // Positions must match the batches one to one.
        let short = Marks {
            producer: "c1".into(),
            positions: vec![1],
        };
        assert!(encode_marked_record(&[a.clone(), a], Some(&short)).is_err());
    }

    #[test]
    fn a_record_declaring_a_huge_body_is_damage_not_an_abort() {
        // Found by the wal_record fuzz target: an IPC message whose body length asks for
        // exabytes made Arrow's StreamReader abort the process on allocation.
        let input = include_bytes!("../../fuzz/corpus/wal_record/regression-ipc-huge-body-length");
        assert!(decode_record(input).is_err());
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut_and_the_prefix_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = spans_batch(0, 4);
        let path = write(
            dir.path(),
            7,
            &[vec![a.clone()], vec![a.clone()], vec![a.clone()]],
        );
        let full = fs::read(&path).unwrap();
        // Torn: cut the last record in half.
        fs::write(&path, &full[..full.len() - 50]).unwrap();
        let r = replay_file(&path).unwrap();
        assert_eq!(r.records, 2);
        let cut = r.cut.unwrap();
        assert!(cut.reason.contains("past the end"), "{}", cut.reason);
        // The file now ends at the intact prefix and replays cleanly.
        let again = replay_file(&path).unwrap();
        assert_eq!(again.records, 2);
        assert!(again.cut.is_none());

        // Corrupt: flip a byte inside the second record.
        let mut bytes = fs::read(&path).unwrap();
        let second = bytes.len() - 20;
        bytes[second] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let r = replay_file(&path).unwrap();
        assert_eq!(r.records, 1);
        assert_eq!(r.cut.unwrap().reason, "checksum mismatch");
    }

    #[test]
    fn garbage_file_is_reset_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(3));
        fs::write(&path, b"definitely not a wal").unwrap();
        let r = replay_file(&path).unwrap();
        assert_eq!(r.records, 0);
        assert!(r.cut.is_some());
        assert_eq!(fs::read(&path).unwrap(), MAGIC);
    }
}
