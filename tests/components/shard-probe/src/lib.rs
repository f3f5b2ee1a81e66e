//! Test component: reports its shard and every merchant whose payments it
//! can see, without filtering by merchant, to prove shard isolation.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::{sql, ApiError};

payfn_sdk::http_step!(handle);

fn handle(_req: &Request) -> Result<Response, ApiError> {
    let rows = sql::query("SELECT DISTINCT merchant_id FROM payments ORDER BY merchant_id", &[])?;
    let merchants = rows.iter().map(|r| r.i64("merchant_id")).collect::<Result<Vec<_>, _>>()?;
    let shard = payfn_sdk::bindings::payfn::host::sql::shard_name();
    Ok(Response::json(200, &serde_json::json!({"shard": shard, "merchants": merchants})))
}
