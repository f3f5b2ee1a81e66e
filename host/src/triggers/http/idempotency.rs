//! Idempotency (API.md): same key + merchant + request within 24 h replays
//! the first response byte for byte; a different request under the key is
//! 422 `idempotency_key_reused`; a request while the first still runs is 409
//! `idempotency_key_in_use`.
//!
//! The record is written in the invocation's shard transaction, so it
//! exists exactly when the response's effects committed. A short-lived lock
//! in the kv store tells "still running" apart from "done".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, Method, StatusCode};
use sha2::{Digest, Sha256};

use super::errors::HostError;
use crate::bindings::sql::{Error as SqlError, Value};
use crate::kv::{host_key, Kv};
use crate::shards::{Shard, ShardTx};

/// How long a record replays.
const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A validated `Idempotency-Key` plus the fingerprint of its request.
pub struct Claim {
    pub merchant_id: i64,
    pub key: String,
    pub fingerprint: String,
    /// The kv lock held, if the kv store could be reached.
    lock_key: Option<String>,
}

/// What to do with a request that carries a key.
pub enum Outcome {
    /// First time: run it, holding the lock.
    Proceed(Claim),
    /// Seen and done: answer this.
    Replay { status: StatusCode, body: Vec<u8> },
}

/// The header's key: 1-255 printable ASCII characters.
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, HostError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        HostError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "`Idempotency-Key` must be 1-255 printable ASCII characters",
        )
    };
    let key = value.to_str().map_err(|_| bad())?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(bad());
    }
    Ok(Some(key.to_string()))
}

/// Identifies "the same request": method, path and body.
pub fn fingerprint(method: &Method, path: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    for part in [method.as_str().as_bytes(), path.as_bytes(), body] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hex::encode(hash.finalize())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn unavailable(e: impl std::fmt::Debug) -> HostError {
    HostError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shard_unavailable",
        format!("idempotency check failed: {e:?}"),
    )
}

/// Takes the key's lock and looks for an earlier response.
pub async fn begin(
    kv: &Kv,
    shard: &Shard,
    merchant_id: i64,
    key: String,
    fingerprint: String,
    lock_ttl: Duration,
) -> Result<Outcome, HostError> {
    let lock_key = host_key("idem", &[&merchant_id.to_string(), &key]);
    // The kv lock turns a concurrent duplicate into an early 409. If the kv
    // store is down the request goes on without it: the record's primary key
    // in the shard transaction still lets only one of two racing requests
    // commit (the other rolls back and gets 409), so nothing happens twice.
    let (locked, lock_key) = match kv.set_nx(&lock_key, Vec::new(), lock_ttl).await {
        Ok(locked) => (locked, Some(lock_key)),
        Err(e) => {
            tracing::warn!(error = ?e, "kv store unreachable; idempotency falls back to the shard's key");
            (true, None)
        }
    };
    if !locked {
        return Err(HostError::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still being processed",
        ));
    }
    let claim = Claim { merchant_id, key, fingerprint, lock_key };
    let found = match lookup(shard, &claim).await {
        Ok(found) => found,
        Err(e) => {
            claim.release(kv).await;
            return Err(e);
        }
    };
    match found {
        None => Ok(Outcome::Proceed(claim)),
        Some((fingerprint, status, body)) => {
            claim.release(kv).await;
            if fingerprint != claim.fingerprint {
                return Err(HostError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request",
                ));
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            Ok(Outcome::Replay { status, body })
        }
    }
}

async fn lookup(shard: &Shard, claim: &Claim) -> Result<Option<(String, u16, Vec<u8>)>, HostError> {
    let mut tx = shard.begin(false).await.map_err(unavailable)?;
    let rows = tx
        .query(
            "SELECT fingerprint, status, body FROM idempotency_keys \
             WHERE merchant_id = ? AND idempotency_key = ? AND created_at_ms >= ?",
            vec![
                Value::Int64(claim.merchant_id),
                Value::Text(claim.key.clone()),
                Value::Int64(now_ms() - RETENTION.as_millis() as i64),
            ],
        )
        .await;
    tx.rollback().await;
    let rows = rows.map_err(unavailable)?;
    let Some(row) = rows.rows.into_iter().next() else {
        return Ok(None);
    };
    match row.as_slice() {
        // MariaDB returns a UTF-8 blob as text (see sql/mysql.rs).
        [Value::Text(fp), Value::Int64(status), Value::Blob(body)] => {
            Ok(Some((fp.clone(), u16::try_from(*status).unwrap_or(200), body.clone())))
        }
        [Value::Text(fp), Value::Int64(status), Value::Text(body)] => {
            Ok(Some((fp.clone(), u16::try_from(*status).unwrap_or(200), body.clone().into_bytes())))
        }
        other => Err(unavailable(format!("malformed idempotency record {other:?}"))),
    }
}

impl Claim {
    /// Writes the record in the invocation's transaction (an expired record
    /// under the same key is replaced).
    pub async fn record(&self, tx: &mut ShardTx, status: StatusCode, body: &[u8]) -> Result<(), SqlError> {
        let now = now_ms();
        tx.execute(
            "DELETE FROM idempotency_keys WHERE merchant_id = ? AND idempotency_key = ? AND created_at_ms < ?",
            vec![
                Value::Int64(self.merchant_id),
                Value::Text(self.key.clone()),
                Value::Int64(now - RETENTION.as_millis() as i64),
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO idempotency_keys \
             (merchant_id, idempotency_key, fingerprint, status, body, created_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
            vec![
                Value::Int64(self.merchant_id),
                Value::Text(self.key.clone()),
                Value::Text(self.fingerprint.clone()),
                Value::Int64(i64::from(status.as_u16())),
                Value::Blob(body.to_vec()),
                Value::Int64(now),
            ],
        )
        .await?;
        Ok(())
    }

    /// Drops the lock once the outcome is committed or abandoned.
    pub async fn release(&self, kv: &Kv) {
        let Some(lock_key) = &self.lock_key else { return };
        if let Err(e) = kv.delete(lock_key).await {
            tracing::warn!(error = ?e, "could not release an idempotency lock; it expires by itself");
        }
    }
}
