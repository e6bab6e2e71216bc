//! Alerting's data in the PostgreSQL metastore, shared by every query node: the configuration
//! as a document written with compare-and-set on its revision, the leader's state as a document
//! only the leader writes, and the history as records. The trait is synchronous (it is called
//! from blocking tasks), so each call runs the async client on the runtime it belongs to.

use std::sync::Arc;

use oxeye_metastore::PgMetastore;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::AlertError;
use crate::storage::{AlertStore, ConfigDoc, Delivery, Event, Loaded, StateDoc};

const CONFIG: &str = "alerts/config";
const STATE: &str = "alerts/state";
const EVENTS: &str = "alert_event";
const DELIVERIES: &str = "alert_delivery";

#[derive(Debug)]
pub struct PgAlertStore {
    meta: Arc<PgMetastore>,
    runtime: tokio::runtime::Handle,
    /// History records kept per kind.
    keep: i64,
}

impl PgAlertStore {
    /// Must be created inside the runtime its calls will use.
    pub fn new(meta: Arc<PgMetastore>, keep: usize) -> PgAlertStore {
        PgAlertStore {
            meta,
            runtime: tokio::runtime::Handle::current(),
            keep: keep as i64,
        }
    }

    fn run<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, oxeye_store::StoreError>>,
    ) -> Result<T, AlertError> {
        self.runtime.block_on(fut).map_err(|e| AlertError::Storage {
            path: self.meta.target().to_string(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, json: &str) -> Result<T, AlertError> {
        serde_json::from_str(json).map_err(|e| AlertError::Storage {
            path: format!("{} ({what})", self.meta.target()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        })
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<String, AlertError> {
        serde_json::to_string(value).map_err(|e| AlertError::Storage {
            path: self.meta.target().to_string(),
            source: std::io::Error::other(e),
        })
    }

    fn history<T: DeserializeOwned>(&self, kind: &str, limit: usize) -> Result<Vec<T>, AlertError> {
        let rows = self.run(self.meta.history(kind, limit as i64, self.keep))?;
        rows.iter().map(|r| self.decode(kind, r)).collect()
    }
}

impl AlertStore for PgAlertStore {
    fn load(&self, history: usize) -> Result<Loaded, AlertError> {
        let (config, config_revision) = match self.run(self.meta.document(CONFIG))? {
            Some(d) => (self.decode("alert configuration", &d.json)?, d.revision),
            None => (ConfigDoc::default(), 0),
        };
        Ok(Loaded {
            config,
            config_revision,
            state: self.load_state()?,
            events: self.history(EVENTS, history)?.into(),
            deliveries: self.history(DELIVERIES, history)?.into(),
        })
    }

    fn save_config(&self, doc: &ConfigDoc, expected: i64) -> Result<i64, AlertError> {
        let json = self.encode(doc)?;
        self.run(self.meta.put_document(CONFIG, expected, &json))?
            .ok_or_else(|| {
                AlertError::Conflict(
                    "the alert configuration was changed by another node at the same time; \
                     reload and try again"
                        .into(),
                )
            })
    }

    fn save_state(&self, doc: &StateDoc) -> Result<(), AlertError> {
        let json = self.encode(doc)?;
        self.run(self.meta.replace_document(STATE, &json))
            .map(|_| ())
    }

    fn append_events(&self, events: &[Event]) -> Result<(), AlertError> {
        let records = events
            .iter()
            .map(|e| Ok((e.time_ms, self.encode(e)?)))
            .collect::<Result<Vec<_>, AlertError>>()?;
        self.run(self.meta.append_history(EVENTS, &records))
    }

    fn append_deliveries(&self, deliveries: &[Delivery]) -> Result<(), AlertError> {
        let records = deliveries
            .iter()
            .map(|d| Ok((d.time_ms, self.encode(d)?)))
            .collect::<Result<Vec<_>, AlertError>>()?;
        self.run(self.meta.append_history(DELIVERIES, &records))
    }

    fn shared(&self) -> bool {
        true
    }

    fn config_if_newer(&self, revision: i64) -> Result<Option<(i64, ConfigDoc)>, AlertError> {
        if self.run(self.meta.document_revision(CONFIG))? <= revision {
            return Ok(None);
        }
        match self.run(self.meta.document(CONFIG))? {
            Some(d) => Ok(Some((
                d.revision,
                self.decode("alert configuration", &d.json)?,
            ))),
            None => Ok(None),
        }
    }

    fn load_state(&self) -> Result<StateDoc, AlertError> {
        match self.run(self.meta.document(STATE))? {
            Some(d) => self.decode("alert state", &d.json),
            None => Ok(StateDoc::default()),
        }
    }
}
