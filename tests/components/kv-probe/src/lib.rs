//! Test component: runs one kv operation from the request body and answers
//! its result, logging it through the `log` capability.
//! Body: `{"op": "get|set|incr|delete|variable", "key": "...", "value": "...", "ttlMs": n, "delta": n}`.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::{kv, log, variables, ApiError};
use serde_json::{json, Value};

payfn_sdk::http_step!(handle);

fn handle(req: &Request) -> Result<Response, ApiError> {
    let body: Value = serde_json::from_slice(&req.body).map_err(|e| ApiError::invalid_json(e.to_string()))?;
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    let key = field("key");
    let result = match field("op").as_str() {
        "get" => json!(kv::get(&key)?.map(|v| String::from_utf8_lossy(&v).into_owned())),
        "set" => {
            kv::set(&key, field("value").as_bytes(), body.get("ttlMs").and_then(Value::as_u64))?;
            json!(null)
        }
        "incr" => json!(kv::incr(&key, body.get("delta").and_then(Value::as_i64).unwrap_or(1))?),
        "delete" => json!(kv::delete(&key)?),
        // A WASIp2 step reading a Spin variable (synchronously).
        "variable" => json!(variables::get(&key).map_err(|e| format!("{e:?}"))),
        other => return Err(ApiError::invalid_field("invalid_field", "op", format!("unknown op `{other}`"))),
    };
    log::info(&format!("kv-probe {} {key} -> {result}", field("op")));
    Ok(Response::json(200, &json!({ "result": result })))
}
