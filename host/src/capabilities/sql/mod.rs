//! `sql`: the merchant's shard, inside the invocation's transaction.
//!
//! The HTTP trigger opens a [`ShardTx`] on the shard the routing table names
//! for the merchant, hands it to the invocation, and takes it back afterwards
//! to commit or roll back (DESIGN.md rule 2). A component can only reach the
//! transaction it was given, so it never sees another shard.

mod batch;
mod checkpoint;
mod errors;
mod group_commit;
mod host;
mod mysql;
pub(crate) mod placeholders;
mod postgres;
pub mod runtime_config;
mod server;
mod shards;
mod sqlite;
mod values;
mod warm;

#[cfg(test)]
pub use shards::test_shard;
pub use shards::{migrate, Shard, ShardSet, ShardTx};
// The embedded event log (kafka/embedded.rs) keeps a SQLite file the way
// the shards do.
pub(crate) use checkpoint::Checkpointer;
pub(crate) use sqlite::{blocking, connect as durable_connection, migrate_and_open_writer};

use crate::bindings::sql::{Dialect, Error as SqlError};

use super::Capability;

/// The registry entry.
pub const CAPABILITY: Capability = Capability {
    name: "sql",
    interface: "payfn:host/sql",
    link: |linker| crate::bindings::sql::add_to_linker::<_, super::Field<SqlState>>(linker, |s| &mut s.sql),
};

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

/// Per-invocation state: the shard the invocation is bound to and its
/// transaction, present until the trigger takes it back.
pub struct SqlState {
    pub shard: String,
    pub dialect: Dialect,
    pub tx: Option<ShardTx>,
}

impl SqlState {
    /// Bound to no shard: every statement fails `unavailable`.
    pub fn unbound() -> Self {
        Self { shard: String::new(), dialect: Dialect::Sqlite, tx: None }
    }

    fn tx(&mut self) -> Result<&mut ShardTx, SqlError> {
        self.tx
            .as_mut()
            .ok_or_else(|| SqlError::Unavailable("this invocation has no shard transaction".into()))
    }
}
