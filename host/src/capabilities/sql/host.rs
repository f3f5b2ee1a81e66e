//! The WIT host implementation of `payfn:host/sql`, and nothing else.

use crate::bindings::sql::{Dialect, Error, Host, RowSet, Statement, Value};

use super::SqlState;

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
