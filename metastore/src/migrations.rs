//! The schema, as numbered steps. A step is never edited once released: changes are new steps.

/// (version, name, SQL). Applied in order, each in the transaction that records it.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "segment catalog",
        "CREATE TABLE oxeye_catalog (
         id boolean PRIMARY KEY DEFAULT true CHECK (id),
         format integer NOT NULL,
         generation bigint NOT NULL
     );
     INSERT INTO oxeye_catalog (id, format, generation) VALUES (true, 1, 0);
     CREATE TABLE oxeye_segments (
         id text PRIMARY KEY,
         table_name text NOT NULL,
         shard integer NOT NULL,
         min_time bigint NOT NULL,
         max_time bigint NOT NULL,
         rows bigint NOT NULL,
         meta jsonb NOT NULL,
         committed_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE INDEX oxeye_segments_time ON oxeye_segments (table_name, max_time, min_time);
     CREATE TABLE oxeye_shards (
         shard integer PRIMARY KEY,
         flushed_wal_seq bigint NOT NULL
     );",
    ),
    (
        2,
        "documents, history and leases",
        "CREATE TABLE oxeye_documents (
             key text PRIMARY KEY,
             revision bigint NOT NULL,
             doc jsonb NOT NULL,
             updated_at timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE oxeye_history (
             id bigserial PRIMARY KEY,
             kind text NOT NULL,
             time_ms bigint NOT NULL,
             record jsonb NOT NULL
         );
         CREATE INDEX oxeye_history_kind ON oxeye_history (kind, id);
         CREATE TABLE oxeye_leases (
             name text PRIMARY KEY,
             holder text NOT NULL,
             expires_at timestamptz NOT NULL
         );",
    ),
    (
        3,
        "node membership",
        "CREATE TABLE oxeye_nodes (
             id text PRIMARY KEY,
             role text NOT NULL,
             flight_addr text NOT NULL,
             first_shard integer NOT NULL,
             shards integer NOT NULL,
             started_at timestamptz NOT NULL DEFAULT now(),
             heartbeat_at timestamptz NOT NULL
         );",
    ),
    (
        4,
        "delivery positions per shard",
        "ALTER TABLE oxeye_shards ADD COLUMN delivered jsonb NOT NULL DEFAULT '{}'::jsonb;",
    ),
    (
        5,
        "shard replicas and their leases",
        "CREATE TABLE oxeye_shard_leases (
             shard integer PRIMARY KEY,
             holder text NOT NULL,
             epoch bigint NOT NULL,
             expires_at timestamptz NOT NULL
         );
         ALTER TABLE oxeye_nodes ADD COLUMN shard_ids integer[];",
    ),
];

/// The advisory lock key that serialises migrations across nodes ("oxeye" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x6f_78_65_79_65;
