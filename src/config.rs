//! Configuration of each role: flags, `OXEYE_*` environment variables and a TOML file.
//!
//! Precedence, highest first: command-line flag, environment variable, the role's section of
//! the config file (`[serve]`, `[collector]`, `[store]`, `[query]`), built-in default. Every
//! setting has all four; `oxeye <role> --help` lists them with their defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use oxeye_model::Signal;
use serde::{Deserialize, Deserializer};

/// A size in bytes, written `1048576`, `64KiB`, `16MiB`, `2GiB` (or KB/MB/GB, powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        oxeye_auth::parse_bytes(s).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written like `10ms`, `30s`, `5m`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("`{s}` is not a duration like 30s or 7d: {e}"))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Retention per signal: `traces=7d,logs=14d,metrics=30d` (`traces` means spans; `metrics`
/// covers every metric table unless one is named on its own).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Retention(pub BTreeMap<Signal, Duration>);

impl FromStr for Retention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        let mut metrics_default = None;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, dur) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` should look like traces=7d"))?;
            let d = humantime::parse_duration(dur.trim()).map_err(|e| format!("`{dur}`: {e}"))?;
            match name.trim() {
                "metrics" => metrics_default = Some(d),
                other => {
                    let signal: Signal = other.parse().map_err(|e| format!("{e}"))?;
                    out.insert(signal, d);
                }
            }
        }
        if let Some(d) = metrics_default {
            for s in [
                Signal::Metrics,
                Signal::Histograms,
                Signal::ExpHistograms,
                Signal::Summaries,
            ] {
                out.entry(s).or_insert(d);
            }
        }
        Ok(Retention(out))
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Settings of `oxeye serve` (all roles in one process).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// Directory for the WAL, catalog and segments [default: ./oxeye-data]
    #[arg(long, env = "OXEYE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// OTLP/gRPC listen address [default: 127.0.0.1:4317]
    #[arg(long, env = "OXEYE_OTLP_GRPC_LISTEN", value_name = "ADDR")]
    pub otlp_grpc_listen: Option<SocketAddr>,

    /// OTLP/HTTP listen address [default: 127.0.0.1:4318]
    #[arg(long, env = "OXEYE_OTLP_HTTP_LISTEN", value_name = "ADDR")]
    pub otlp_http_listen: Option<SocketAddr>,

    /// HTTP API and web UI listen address [default: 127.0.0.1:7700]
    #[arg(long, env = "OXEYE_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,

    /// PostgreSQL wire protocol listen address [default: 127.0.0.1:5433]
    #[arg(long, env = "OXEYE_PG_LISTEN", value_name = "ADDR")]
    pub pg_listen: Option<SocketAddr>,

    /// Largest OTLP request accepted (gRPC message, HTTP body before decompression) [default: 16MiB]
    #[arg(long, env = "OXEYE_MAX_REQUEST_SIZE", value_name = "SIZE")]
    pub max_request_size: Option<ByteSize>,

    /// Largest OTLP/HTTP body after decompression [default: 64MiB]
    #[arg(long, env = "OXEYE_MAX_DECOMPRESSED_SIZE", value_name = "SIZE")]
    pub max_decompressed_size: Option<ByteSize>,

    /// Memory for OTLP requests in flight; beyond it clients get retryable errors [default: 512MiB]
    #[arg(long, env = "OXEYE_INGEST_MEMORY", value_name = "SIZE")]
    pub ingest_memory: Option<ByteSize>,

    /// Attributes kept per span, event, link, log record, data point, resource and scope; the
    /// rest are dropped and counted in the item's dropped_attributes_count [default: 128]
    #[arg(long, env = "OXEYE_MAX_ATTRIBUTES", value_name = "N")]
    pub max_attributes: Option<usize>,

    /// Longest attribute value kept (strings are cut at a character boundary) [default: 16KiB]
    #[arg(long, env = "OXEYE_MAX_ATTRIBUTE_VALUE_SIZE", value_name = "SIZE")]
    pub max_attribute_value_size: Option<ByteSize>,

    /// Rows the collector gathers before writing a batch to the store [default: 16384]
    #[arg(long, env = "OXEYE_BATCH_MAX_ROWS", value_name = "ROWS")]
    pub batch_max_rows: Option<usize>,

    /// Longest a row waits in the collector's batch [default: 10ms]
    #[arg(long, env = "OXEYE_BATCH_MAX_DELAY", value_name = "DURATION")]
    pub batch_max_delay: Option<Dur>,

    /// Store shards in this process, each with its own WAL [default: 1]
    #[arg(long, env = "OXEYE_SHARDS", value_name = "N")]
    pub shards: Option<u32>,

    /// Id of this process's first shard; nodes sharing a --metastore serve disjoint ranges
    /// (`--first-shard 4 --shards 4` is shards 4..7) [default: 0]
    #[arg(long, env = "OXEYE_FIRST_SHARD", value_name = "ID")]
    pub first_shard: Option<u32>,

    /// The shards of a store node (`oxeye store`) as a list, instead of --first-shard and
    /// --shards, e.g. `--shard-ids 4,5,0,1`. Store nodes that list the same shard are its
    /// replicas: the collectors write each of its rows to all of them [default: unset]
    #[arg(
        long,
        env = "OXEYE_SHARD_IDS",
        value_name = "IDS",
        value_delimiter = ','
    )]
    pub shard_ids: Option<Vec<u32>>,

    /// Flush a shard's memtable to a segment at this size... [default: 128MiB]
    #[arg(long, env = "OXEYE_FLUSH_SIZE", value_name = "SIZE")]
    pub flush_size: Option<ByteSize>,

    /// ...or at this age [default: 30s]
    #[arg(long, env = "OXEYE_FLUSH_AGE", value_name = "DURATION")]
    pub flush_age: Option<Dur>,

    /// Refuse writes (retryably) while a shard's unflushed data exceeds this [default: 1GiB]
    #[arg(long, env = "OXEYE_MAX_UNFLUSHED", value_name = "SIZE")]
    pub max_unflushed: Option<ByteSize>,

    /// Keep data this long per signal, e.g. traces=7d,logs=14d,metrics=30d [default: keep forever]
    #[arg(long, env = "OXEYE_RETENTION", value_name = "SIGNAL=DURATION,...")]
    pub retention: Option<Retention>,

    /// Refuse writes (retryably) when the data disk has less free space than this [default: 512MiB]
    #[arg(long, env = "OXEYE_MIN_FREE_DISK", value_name = "SIZE")]
    pub min_free_disk: Option<ByteSize>,

    /// Segments smaller than this many rows are merged in the background [default: 2000000]
    #[arg(long, env = "OXEYE_COMPACTION_TARGET_ROWS", value_name = "ROWS")]
    pub compaction_target_rows: Option<u64>,

    /// How often compaction and retention run [default: 10s]
    #[arg(long, env = "OXEYE_MAINTENANCE_INTERVAL", value_name = "DURATION")]
    pub maintenance_interval: Option<Dur>,

    /// Longest a SQL query may run [default: 30s]
    #[arg(long, env = "OXEYE_QUERY_TIMEOUT", value_name = "DURATION")]
    pub query_timeout: Option<Dur>,

    /// Memory all running queries may use together; sorts and joins spill beyond it [default: 2GiB]
    #[arg(long, env = "OXEYE_QUERY_MEMORY", value_name = "SIZE")]
    pub query_memory: Option<ByteSize>,

    /// Most rows a query returns; the rest is cut and the result marked truncated [default: 100000]
    #[arg(long, env = "OXEYE_QUERY_MAX_ROWS", value_name = "ROWS")]
    pub query_max_rows: Option<usize>,

    /// PostgreSQL protocol user [default: oxeye]
    #[arg(long, env = "OXEYE_PG_USER", value_name = "NAME")]
    pub pg_user: Option<String>,

    /// PostgreSQL protocol password; when unset, connections from loopback are trusted and
    /// others refused [default: unset]
    #[arg(
        long,
        env = "OXEYE_PG_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub pg_password: Option<String>,

    /// Most bytes a collector (`oxeye collector`) holds on disk for store nodes that are down
    /// or slow; beyond it writes are refused with OTLP's retryable codes [default: 1GiB]
    #[arg(long, env = "OXEYE_QUEUE_SIZE", value_name = "SIZE")]
    pub queue_size: Option<ByteSize>,

    /// A collector acknowledges a write once this many replicas of each shard it touches hold
    /// it in their WAL (and it is in the collector's queue). Replicas whose deliveries are
    /// failing are not waited for: the queue keeps their rows until they are back. 0:
    /// acknowledge once queued [default: 1]
    #[arg(long, env = "OXEYE_WRITE_QUORUM", value_name = "N")]
    pub write_quorum: Option<usize>,

    /// Longest a write waits for its quorum before it is acknowledged on the strength of the
    /// collector's queue alone [default: 5s]
    #[arg(long, env = "OXEYE_WRITE_QUORUM_TIMEOUT", value_name = "DURATION")]
    pub write_quorum_timeout: Option<Dur>,

    /// Arrow Flight listen address of a store node (`oxeye store`) [default: 127.0.0.1:7701]
    #[arg(long, env = "OXEYE_FLIGHT_LISTEN", value_name = "ADDR")]
    pub flight_listen: Option<SocketAddr>,

    /// The Flight URL other nodes reach this store node at [default: http://<flight-listen>, https:// with --tls-cert]
    #[arg(long, env = "OXEYE_FLIGHT_ADVERTISE", value_name = "URL")]
    pub flight_advertise: Option<String>,

    /// Keep the segment catalog in PostgreSQL, `postgres://user:password@host:5432/db`, instead
    /// of `<data-dir>/catalog.json` (with --object-store, a node's disk then holds only its WAL
    /// and read cache) [default: unset, local file]
    #[arg(
        long,
        env = "OXEYE_METASTORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub metastore: Option<String>,

    /// Keep segments and index files in S3-compatible object storage, `s3://bucket/prefix`,
    /// instead of `<data-dir>/objects`; credentials from the AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY environment variables [default: unset, local disk]
    #[arg(long, env = "OXEYE_OBJECT_STORE", value_name = "URL")]
    pub object_store: Option<String>,

    /// S3-compatible endpoint (MinIO, Ceph, ...), e.g. http://127.0.0.1:9000 [default: AWS]
    #[arg(long, env = "OXEYE_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region [default: us-east-1]
    #[arg(long, env = "OXEYE_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Local read cache of segments kept in object storage, under `<data-dir>/cache`
    /// [default: 4GiB]
    #[arg(long, env = "OXEYE_CACHE_SIZE", value_name = "SIZE")]
    pub cache_size: Option<ByteSize>,

    /// TOML file of alert rules and notification channels, loaded at start and again whenever
    /// it changes (rules kept in git) [default: unset]
    #[arg(long, env = "OXEYE_ALERT_RULES_FILE", value_name = "FILE")]
    pub alert_rules_file: Option<PathBuf>,

    /// oxeye's address as people reach it, for links in alert notifications
    /// [default: http://<http-listen>, https:// with --tls-cert]
    #[arg(long, env = "OXEYE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// TOML file of API tokens (name, role ingest/read/admin, sha256 of the secret): OTLP then
    /// needs an ingest token, the HTTP API and UI a read or admin one [default: unset, no
    /// checks, and only loopback addresses allowed]
    #[arg(long, env = "OXEYE_AUTH_TOKENS_FILE", value_name = "FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Start even though a listener without authentication is bound to a non-loopback
    /// address (OTLP or HTTP without --auth-tokens-file, Arrow Flight without
    /// --tls-client-ca) [default: false]
    #[arg(
        long,
        env = "OXEYE_ALLOW_UNAUTHENTICATED",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub allow_unauthenticated: Option<bool>,

    /// PEM certificate (chain) of this process: with --tls-key, every listener speaks TLS
    /// (OTLP, the HTTP API and UI, PostgreSQL, Arrow Flight) [default: unset, plain text]
    #[arg(long, env = "OXEYE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1) [default: unset]
    #[arg(long, env = "OXEYE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates for mutual TLS between nodes: a store node's Flight listener then
    /// accepts only peers with a certificate one of them signed, and this process shows
    /// --tls-cert to the nodes it connects to [default: unset, no client certificates]
    #[arg(long, env = "OXEYE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// PEM CA certificates that signed other nodes' certificates, for https:// Flight
    /// addresses [default: the system's roots]
    #[arg(long, env = "OXEYE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Store oxeye's own traces (OTLP exports, API requests, SQL queries, flushes,
    /// compactions, Flight writes, alert evaluations) in oxeye, as the service `oxeye`; not on
    /// query nodes [default: false]
    #[arg(
        long,
        env = "OXEYE_SELF_TRACE",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub self_trace: Option<bool>,
}

macro_rules! merge_fields {
    ($hi:expr, $lo:expr, $($f:ident),* $(,)?) => {
        ServeArgs { $($f: $hi.$f.or($lo.$f),)* }
    };
}

impl ServeArgs {
    /// Fills every unset field of `self` (flags and environment) from `file`.
    pub fn over(self, file: ServeArgs) -> ServeArgs {
        merge_fields!(
            self,
            file,
            data_dir,
            otlp_grpc_listen,
            otlp_http_listen,
            http_listen,
            pg_listen,
            max_request_size,
            max_decompressed_size,
            ingest_memory,
            max_attributes,
            max_attribute_value_size,
            batch_max_rows,
            batch_max_delay,
            shards,
            first_shard,
            shard_ids,
            flush_size,
            flush_age,
            max_unflushed,
            retention,
            min_free_disk,
            compaction_target_rows,
            maintenance_interval,
            query_timeout,
            query_memory,
            query_max_rows,
            pg_user,
            pg_password,
            alert_rules_file,
            public_url,
            auth_tokens_file,
            allow_unauthenticated,
            tls_cert,
            tls_key,
            tls_client_ca,
            tls_ca,
            self_trace,
            queue_size,
            write_quorum,
            write_quorum_timeout,
            flight_listen,
            flight_advertise,
            metastore,
            object_store,
            s3_endpoint,
            s3_region,
            cache_size,
        )
    }
}

/// The config file: one optional section per role.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub serve: ServeArgs,
    #[serde(default)]
    pub collector: ServeArgs,
    #[serde(default)]
    pub store: ServeArgs,
    #[serde(default)]
    pub query: ServeArgs,
}

impl ConfigFile {
    pub fn load(path: Option<&Path>) -> anyhow::Result<ConfigFile> {
        let Some(path) = path else {
            return Ok(ConfigFile::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let parsed: ConfigFile = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(parsed)
    }
}

fn bytes(v: Option<ByteSize>, default: u64) -> anyhow::Result<usize> {
    let b = v.map(|b| b.0).unwrap_or(default);
    usize::try_from(b).context("size too large for this machine")
}

/// Everything `oxeye serve` runs with, defaults applied.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub pg_listen: SocketAddr,
    pub pg_user: String,
    pub pg_password: Option<String>,
    pub collector: oxeye_collector::CollectorConfig,
    pub store: oxeye_store::StoreConfig,
    pub query: oxeye_query::QueryConfig,
    pub alert: oxeye_alert::AlertConfig,
    /// The catalog in PostgreSQL instead of the data directory.
    pub metastore: Option<String>,
    pub flight_listen: SocketAddr,
    pub flight_advertise: String,
    /// The collector's queue bound.
    pub queue_bytes: u64,
    /// Replicas that must hold a write before a collector acknowledges it (0: once queued).
    pub write_quorum: usize,
    pub write_quorum_timeout: Duration,
    /// Segments in S3-compatible storage instead of the data directory.
    pub object_store: Option<oxeye_store::S3Options>,
    pub cache_bytes: u64,
    /// API tokens (off when no token file was given).
    pub auth: oxeye_auth::Auth,
    /// Listeners without authentication may bind non-loopback addresses.
    pub allow_unauthenticated: bool,
    /// Certificates for the listeners and for connections to other nodes (off without them).
    pub tls: oxeye_tls::Tls,
}

impl ServeConfig {
    /// Refuses listeners that anyone on the network could use without a credential, unless
    /// `--allow-unauthenticated` says that is intended. `listeners` are `(what, address,
    /// authenticated)`.
    pub fn check_exposure(&self, listeners: &[(&str, SocketAddr, bool)]) -> anyhow::Result<()> {
        let exposed: Vec<String> = listeners
            .iter()
            .filter(|(_, addr, authenticated)| !authenticated && !addr.ip().is_loopback())
            .map(|(what, addr, _)| format!("{what} on {addr}"))
            .collect();
        if exposed.is_empty() || self.allow_unauthenticated {
            if !exposed.is_empty() {
                tracing::warn!(listeners = ?exposed, "listening without authentication on non-loopback addresses (--allow-unauthenticated)");
            }
            return Ok(());
        }
        anyhow::bail!(
            "refusing to listen without authentication on a non-loopback address: {}. Give \
             --auth-tokens-file (API tokens for OTLP, the HTTP API and the UI) and \
             --pg-password, mutual TLS for Arrow Flight between nodes (--tls-cert, --tls-key \
             and --tls-client-ca), bind 127.0.0.1, or pass --allow-unauthenticated if the \
             network is trusted",
            exposed.join(", ")
        )
    }
}

impl ServeArgs {
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("./oxeye-data"));
        let auth = match &self.auth_tokens_file {
            None => oxeye_auth::Auth::off(),
            Some(path) => oxeye_auth::Auth::with_tokens(oxeye_auth::Tokens::load(path)?),
        };
        let tls = oxeye_tls::Tls::load(&oxeye_tls::TlsFiles {
            cert: self.tls_cert,
            key: self.tls_key,
            client_ca: self.tls_client_ca,
            ca: self.tls_ca,
        })?;
        let scheme = tls.scheme();
        let collector_defaults = oxeye_collector::CollectorConfig::default();
        let collector = oxeye_collector::CollectorConfig {
            auth: auth.clone(),
            tls: tls.clone(),
            grpc_listen: self
                .otlp_grpc_listen
                .unwrap_or(collector_defaults.grpc_listen),
            http_listen: self
                .otlp_http_listen
                .unwrap_or(collector_defaults.http_listen),
            max_request_bytes: bytes(
                self.max_request_size,
                collector_defaults.max_request_bytes as u64,
            )?,
            max_decompressed_bytes: bytes(
                self.max_decompressed_size,
                collector_defaults.max_decompressed_bytes as u64,
            )?,
            memory_budget_bytes: bytes(
                self.ingest_memory,
                collector_defaults.memory_budget_bytes as u64,
            )?,
            batch_max_rows: self
                .batch_max_rows
                .unwrap_or(collector_defaults.batch_max_rows),
            batch_max_delay: self
                .batch_max_delay
                .map(|d| d.0)
                .unwrap_or(collector_defaults.batch_max_delay),
            attribute_limits: oxeye_collector::limits::AttributeLimits {
                max_count: self
                    .max_attributes
                    .unwrap_or(collector_defaults.attribute_limits.max_count),
                max_value_bytes: bytes(
                    self.max_attribute_value_size,
                    collector_defaults.attribute_limits.max_value_bytes as u64,
                )?,
            },
            ..collector_defaults
        };
        if collector.attribute_limits.max_value_bytes == 0 {
            bail!("--max-attribute-value-size must be at least 1 byte");
        }
        if collector.max_decompressed_bytes < collector.max_request_bytes {
            bail!("--max-decompressed-size must be at least --max-request-size");
        }
        let mut store = oxeye_store::StoreConfig::new(&data_dir);
        store.shards = self.shards.unwrap_or(store.shards);
        if store.shards == 0 {
            bail!("--shards must be at least 1");
        }
        store.first_shard = self.first_shard.unwrap_or(0);
        if store.first_shard.checked_add(store.shards).is_none() {
            bail!("--first-shard + --shards must stay below 2^32");
        }
        if let Some(ids) = self.shard_ids {
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if ids.is_empty() || sorted.len() != ids.len() {
                bail!("--shard-ids must list at least one shard, each once (got {ids:?})");
            }
            if self.first_shard.is_some() || self.shards.is_some() {
                bail!("--shard-ids replaces --first-shard and --shards: give one or the other");
            }
            store.shards = ids.len() as u32;
            store.shard_list = Some(ids);
        }
        store.flush_bytes = bytes(self.flush_size, store.flush_bytes as u64)?;
        store.flush_age = self.flush_age.map(|d| d.0).unwrap_or(store.flush_age);
        store.max_unflushed_bytes = bytes(self.max_unflushed, store.max_unflushed_bytes as u64)?;
        store.retention = self.retention.map(|r| r.0).unwrap_or_default();
        store.min_free_disk_bytes = self
            .min_free_disk
            .map(|b| b.0)
            .unwrap_or(store.min_free_disk_bytes);
        store.compaction_target_rows = self
            .compaction_target_rows
            .unwrap_or(store.compaction_target_rows);
        store.maintenance_interval = self
            .maintenance_interval
            .map(|d| d.0)
            .unwrap_or(store.maintenance_interval);
        let query_defaults = oxeye_query::QueryConfig::default();
        let query = oxeye_query::QueryConfig {
            timeout: self
                .query_timeout
                .map(|d| d.0)
                .unwrap_or(query_defaults.timeout),
            memory_limit_bytes: bytes(self.query_memory, query_defaults.memory_limit_bytes as u64)?,
            max_result_rows: self
                .query_max_rows
                .unwrap_or(query_defaults.max_result_rows),
            ..query_defaults
        };
        let flight_listen = self
            .flight_listen
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7701)));
        let http_listen = self
            .http_listen
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7700)));
        let alert = oxeye_alert::AlertConfig {
            rules_file: self.alert_rules_file,
            public_url: self
                .public_url
                .unwrap_or_else(|| format!("{scheme}://{http_listen}")),
            ..oxeye_alert::AlertConfig::default()
        };
        Ok(ServeConfig {
            data_dir,
            http_listen,
            pg_listen: self
                .pg_listen
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5433))),
            pg_user: self.pg_user.unwrap_or_else(|| "oxeye".into()),
            pg_password: self.pg_password,
            collector,
            store,
            query,
            alert,
            metastore: self.metastore,
            flight_listen,
            queue_bytes: self.queue_size.map(|b| b.0).unwrap_or(1 << 30),
            write_quorum: self.write_quorum.unwrap_or(1),
            write_quorum_timeout: self
                .write_quorum_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(5)),
            flight_advertise: self
                .flight_advertise
                .unwrap_or_else(|| format!("{scheme}://{flight_listen}")),
            object_store: self.object_store.map(|url| oxeye_store::S3Options {
                url,
                endpoint: self.s3_endpoint,
                region: self.s3_region,
                access_key_id: None,
                secret_access_key: None,
            }),
            cache_bytes: self.cache_size.map(|b| b.0).unwrap_or(4 << 30),
            auth,
            allow_unauthenticated: self.allow_unauthenticated.unwrap_or(false),
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_retention_parse() {
        assert_eq!("16MiB".parse::<ByteSize>().unwrap(), ByteSize(16 << 20));
        assert_eq!("2GB".parse::<ByteSize>().unwrap(), ByteSize(2_000_000_000));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert_eq!("10ms".parse::<Dur>().unwrap().0, Duration::from_millis(10));
        let r: Retention = "traces=7d, logs=14d, metrics=30d".parse().unwrap();
        assert_eq!(r.0[&Signal::Spans], Duration::from_secs(7 * 86400));
        assert_eq!(r.0[&Signal::Histograms], Duration::from_secs(30 * 86400));
        assert!("bogus=1d".parse::<Retention>().is_err());
    }

    #[test]
    fn flags_beat_file_beats_default() {
        let file: ConfigFile = toml::from_str(
            r#"
            [serve]
            data_dir = "/from/file"
            shards = 3
            max_request_size = "8MiB"
            retention = "traces=1d"
            "#,
        )
        .unwrap();
        let cli = ServeArgs {
            data_dir: Some("/from/flag".into()),
            ..Default::default()
        };
        let cfg = cli.over(file.serve).resolve().unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(cfg.store.shards, 3);
        assert_eq!(cfg.collector.max_request_bytes, 8 << 20);
        assert_eq!(cfg.http_listen.port(), 7700);
        assert_eq!(
            cfg.store.retention[&Signal::Spans],
            Duration::from_secs(86400)
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<ConfigFile>("[serve]\ndata_dri = \"x\"").is_err());
        assert!(toml::from_str::<ConfigFile>("[severe]\n").is_err());
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../examples/oxeye.toml");
        let file: ConfigFile = toml::from_str(text).unwrap();
        file.serve.resolve().unwrap();
    }
}
