//! `sql`: statements on the merchant's shard, inside the invocation's
//! transaction.
//!
//! The trigger opens a [`ShardTx`] on the shard the merchant directory names,
//! lends it to the invocation, and takes it back afterwards to commit or roll
//! back (DESIGN.md rule 2). A component reaches only the transaction it was
//! lent, so it never sees another shard.

use wasmtime::component::Linker;

use super::{Capability, ComponentConfig, Field, HostResources, Lent};
use crate::bindings::sql::{Dialect, Error, Host, RowSet, Statement, Value};
use crate::shards::ShardTx;

/// The capability: it keeps nothing of its own.
pub struct Sql;

impl Capability for Sql {
    const NAME: &'static str = "sql";
    const INTERFACES: &'static [&'static str] = &["payfn:host/sql"];
    const HOLDS_TRANSACTION: bool = true;
    type Component = ();
    type State = SqlState;

    async fn init(_host: &HostResources) -> anyhow::Result<Self> {
        Ok(Sql)
    }

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut SqlState,
    ) -> wasmtime::Result<()> {
        crate::bindings::sql::add_to_linker::<_, Field<SqlState>>(linker, get)
    }

    fn configure(&self, _component: &ComponentConfig<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn instance(&self, _component: &(), lent: &mut Lent) -> SqlState {
        let (shard, dialect) = lent.shard.clone().unwrap_or_else(|| (String::new(), Dialect::Sqlite));
        SqlState { shard, dialect, tx: lent.tx.take() }
    }

    fn give_back(state: SqlState, lent: &mut Lent) {
        lent.tx = state.tx;
    }
}

/// Per-invocation state: the shard the invocation is bound to and its
/// transaction (none: every statement fails `unavailable`).
pub struct SqlState {
    shard: String,
    dialect: Dialect,
    tx: Option<ShardTx>,
}

impl SqlState {
    fn tx(&mut self) -> Result<&mut ShardTx, Error> {
        self.tx.as_mut().ok_or_else(|| Error::Unavailable("this invocation has no shard transaction".into()))
    }
}

impl Host for SqlState {
    async fn query(&mut self, statement: String, params: Vec<Value>) -> Result<RowSet, Error> {
        self.tx()?.query(&statement, params).await
    }

    async fn execute(&mut self, statement: String, params: Vec<Value>) -> Result<u64, Error> {
        self.tx()?.execute(&statement, params).await
    }

    async fn execute_batch(&mut self, statements: Vec<Statement>) -> Result<Vec<u64>, Error> {
        self.tx()?.execute_batch(statements).await
    }

    async fn shard_dialect(&mut self) -> Dialect {
        self.dialect
    }

    async fn shard_name(&mut self) -> String {
        self.shard.clone()
    }
}
