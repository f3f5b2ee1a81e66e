//! The shards: the databases merchants' rows live in (SQLite, MariaDB,
//! PostgreSQL), their pools, transactions and migrations.
//!
//! Triggers open a [`ShardTx`] on the shard the merchant directory names and
//! lend it to an invocation, whose `sql` capability
//! ([`crate::capabilities::sql`]) runs the component's statements in it
//! (DESIGN.md rule 2). The directory, moves, retention and reconciliation
//! use the shards directly.

mod batch;
mod checkpoint;
mod errors;
mod group_commit;
mod mysql;
pub(crate) mod placeholders;
mod postgres;
pub mod runtime_config;
mod server;
mod shard;
mod sqlite;
mod values;
mod warm;

#[cfg(test)]
pub use shard::test_shard;
pub use shard::{migrate, Migrated, Shard, ShardSet, ShardTx};
// The embedded event log (kafka/embedded.rs) keeps a SQLite file the way
// the shards do.
pub(crate) use checkpoint::Checkpointer;
pub(crate) use sqlite::{blocking, connect as durable_connection, migrate_and_open_writer};

/// A shard's connections as the admin console shows them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolUse {
    /// In a transaction now.
    pub in_use: u32,
    /// Open, in a transaction or idle.
    pub open: u32,
    /// The most the shard opens.
    pub max: u32,
}
