//! Durable alerting data: rules, channels and silences (the configuration), each rule's
//! instances and notification marks (the state), and the history of state changes and
//! deliveries. [`AlertStore`] is the seam; [`LocalStore`] keeps it in the data directory (the
//! embedded default): whole documents replaced atomically (write, fsync, rename) and history
//! appended as JSON lines, rotated at a size cap.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::AlertError;
use crate::rule::{Channel, Rule};
use crate::silence::Silence;
use crate::state::{EventState, Instance};

/// Rules (those created through the API), channels and silences.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigDoc {
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub silences: Vec<Silence>,
}

/// The last evaluation of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub at_ms: i64,
    pub duration_ms: f64,
    pub error: Option<String>,
    pub rows: usize,
}

/// What the evaluator knows about one rule between evaluations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleRuntime {
    #[serde(default)]
    pub instances: BTreeMap<String, Instance>,
    #[serde(default)]
    pub last_evaluation: Option<Evaluation>,
    #[serde(default)]
    pub last_alertmanager_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateDoc {
    #[serde(default)]
    pub rules: BTreeMap<String, RuleRuntime>,
}

/// One state change of one alert instance (a row of `alert_events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub time_ms: i64,
    pub rule_id: String,
    pub rule_name: String,
    pub severity: String,
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    pub from: EventState,
    pub to: EventState,
    pub value: Option<f64>,
    pub message: Option<String>,
}

/// One delivery attempt of one notification (a row of `alert_notifications`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub time_ms: i64,
    pub rule_id: String,
    pub rule_name: String,
    /// The channel's name, or `type url` for a channel given inline.
    pub channel: String,
    pub kind: String,
    pub status: String,
    pub alerts: usize,
    pub attempt: u32,
    pub ok: bool,
    pub error: Option<String>,
}

/// Everything read back at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub config: ConfigDoc,
    /// The configuration's revision, for [`AlertStore::save_config`].
    pub config_revision: i64,
    pub state: StateDoc,
    pub events: VecDeque<Event>,
    pub deliveries: VecDeque<Delivery>,
}

/// Where alerting keeps its data. The embedded default is [`LocalStore`]; a cluster keeps it in
/// the PostgreSQL metastore ([`crate::storage_pg::PgAlertStore`]), shared by every query node.
pub trait AlertStore: Send + Sync + 'static {
    /// Reads everything, keeping at most `history` of the newest events and deliveries.
    fn load(&self, history: usize) -> Result<Loaded, AlertError>;
    /// Saves the configuration if it is still at revision `expected` (another node may have
    /// changed it meanwhile: [`AlertError::Conflict`]); returns the new revision.
    fn save_config(&self, doc: &ConfigDoc, expected: i64) -> Result<i64, AlertError>;
    fn save_state(&self, doc: &StateDoc) -> Result<(), AlertError>;
    fn append_events(&self, events: &[Event]) -> Result<(), AlertError>;
    fn append_deliveries(&self, deliveries: &[Delivery]) -> Result<(), AlertError>;
    /// Whether other nodes share this store (then followers re-read it).
    fn shared(&self) -> bool {
        false
    }
    /// The configuration, when its revision is past `revision`.
    fn config_if_newer(&self, _revision: i64) -> Result<Option<(i64, ConfigDoc)>, AlertError> {
        Ok(None)
    }
    /// The state as the leader last saved it.
    fn load_state(&self) -> Result<StateDoc, AlertError>;
}

/// Files in a directory: `config.json`, `state.json`, `events.jsonl`, `notifications.jsonl`
/// (each history file rotated to `*.1.jsonl` past `max_history_bytes`).
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    max_history_bytes: u64,
    /// One writer at a time per file, so appends and rotations never interleave.
    append_lock: parking_lot::Mutex<()>,
}

impl LocalStore {
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalStore, AlertError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| AlertError::storage(&dir, e))?;
        Ok(LocalStore {
            dir,
            max_history_bytes: 32 * 1024 * 1024,
            append_lock: parking_lot::Mutex::new(()),
        })
    }

    pub fn with_max_history_bytes(mut self, bytes: u64) -> LocalStore {
        self.max_history_bytes = bytes;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read_doc<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, AlertError> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                AlertError::storage(
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("the file is damaged ({e}); restore it from a backup or move it away to start empty"),
                    ),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(AlertError::storage(&path, e)),
        }
    }

    /// Replaces a document so that a crash leaves either the old or the new one, never half.
    fn write_doc<T: Serialize>(&self, name: &str, doc: &T) -> Result<(), AlertError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let bytes = serde_json::to_vec_pretty(doc)
            .map_err(|e| AlertError::storage(&path, std::io::Error::other(e)))?;
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            AlertError::storage(&path, e)
        })
    }

    fn append<T: Serialize>(&self, name: &str, records: &[T]) -> Result<(), AlertError> {
        if records.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(format!("{name}.jsonl"));
        let mut text = Vec::new();
        for r in records {
            serde_json::to_writer(&mut text, r)
                .map_err(|e| AlertError::storage(&path, std::io::Error::other(e)))?;
            text.push(b'\n');
        }
        let _guard = self.append_lock.lock();
        let io = || -> std::io::Result<()> {
            if fs::metadata(&path).is_ok_and(|m| m.len() > self.max_history_bytes) {
                fs::rename(&path, self.dir.join(format!("{name}.1.jsonl")))?;
            }
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            f.write_all(&text)?;
            f.sync_data()
        };
        io().map_err(|e| AlertError::storage(&path, e))
    }

    /// The newest `keep` records of a history, older file first. A torn last line (a crash
    /// mid-append) is skipped.
    fn read_history<T: DeserializeOwned>(&self, name: &str, keep: usize) -> VecDeque<T> {
        let mut out = VecDeque::new();
        for file in [format!("{name}.1.jsonl"), format!("{name}.jsonl")] {
            let Ok(f) = File::open(self.dir.join(&file)) else {
                continue;
            };
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<T>(&line) {
                    Ok(r) => {
                        if out.len() == keep {
                            out.pop_front();
                        }
                        out.push_back(r);
                    }
                    Err(e) => {
                        tracing::warn!(file, error = %e, "skipping an unreadable alert history line");
                    }
                }
            }
        }
        out
    }
}

impl AlertStore for LocalStore {
    fn load(&self, history: usize) -> Result<Loaded, AlertError> {
        Ok(Loaded {
            config: self.read_doc("config.json")?,
            config_revision: 0,
            state: self.read_doc("state.json")?,
            events: self.read_history("events", history),
            deliveries: self.read_history("notifications", history),
        })
    }

    /// One process owns the directory, so there is nobody to conflict with.
    fn save_config(&self, doc: &ConfigDoc, expected: i64) -> Result<i64, AlertError> {
        self.write_doc("config.json", doc)?;
        Ok(expected + 1)
    }

    fn load_state(&self) -> Result<StateDoc, AlertError> {
        self.read_doc("state.json")
    }

    fn save_state(&self, doc: &StateDoc) -> Result<(), AlertError> {
        self.write_doc("state.json", doc)
    }

    fn append_events(&self, events: &[Event]) -> Result<(), AlertError> {
        self.append("events", events)
    }

    fn append_deliveries(&self, deliveries: &[Delivery]) -> Result<(), AlertError> {
        self.append("notifications", deliveries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> Event {
        Event {
            time_ms: n,
            rule_id: "r".into(),
            rule_name: "r".into(),
            severity: "warning".into(),
            fingerprint: "f".into(),
            labels: BTreeMap::new(),
            from: EventState::Inactive,
            to: EventState::Pending,
            value: Some(n as f64),
            message: None,
        }
    }

    #[test]
    fn documents_and_history_survive_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LocalStore::open(dir.path()).expect("open");
        let loaded = store.load(10).expect("empty load");
        assert!(loaded.config.rules.is_empty() && loaded.events.is_empty());
        let mut state = StateDoc::default();
        state.rules.insert("r".into(), RuleRuntime::default());
        store.save_state(&state).expect("save");
        store.append_events(&[event(1), event(2)]).expect("append");
        store.append_events(&[event(3)]).expect("append");
        let store = LocalStore::open(dir.path()).expect("reopen");
        let loaded = store.load(2).expect("load");
        assert_eq!(loaded.state, state);
        let times: Vec<i64> = loaded.events.iter().map(|e| e.time_ms).collect();
        assert_eq!(times, vec![2, 3], "the newest two");
    }

    #[test]
    fn history_rotates_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LocalStore::open(dir.path())
            .expect("open")
            .with_max_history_bytes(200);
        for n in 0..10 {
            store.append_events(&[event(n)]).expect("append");
        }
        assert!(dir.path().join("events.1.jsonl").exists());
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("events.jsonl"))
            .expect("open");
        f.write_all(b"{\"time_ms\": 99, \"rule")
            .expect("torn write");
        let loaded = store.load(100).expect("load");
        let last = loaded.events.back().map(|e| e.time_ms);
        assert_eq!(last, Some(9));
    }

    #[test]
    fn a_damaged_document_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        fs::write(dir.path().join("config.json"), "{not json").expect("write");
        let err = LocalStore::open(dir.path())
            .expect("open")
            .load(1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("damaged"),
            "{err}"
        );
    }
}
