//! oxeye's metastore in PostgreSQL: the segment catalog (which segments exist, and how far each
//! shard's WAL is in them) shared by every node of a cluster, so that a node's disk holds only
//! its WAL and a read cache. Schema changes are numbered migrations, applied once under an
//! advisory lock; every catalog change is one transaction that locks the catalog row first, so
//! commits from several nodes serialise and a change that conflicts with another (a segment
//! already merged away, a flush behind its shard's checkpoint) fails without effect. Other
//! parts keep versioned documents, history and leases here too (see [`Document`]).

mod documents;
mod leases;
mod migrations;
mod nodes;
mod pg;

pub use documents::Document;
pub use nodes::Node;

pub use pg::{MetastoreError, PgMetastore, redact};
