//! The outbox relay: run by a timer trigger once per shard, inside a write
//! transaction on that shard.
//!
//! A firing:
//! 1. takes the shard's relay lease (`outbox_relay_lease`, `FOR UPDATE SKIP
//!    LOCKED` on MariaDB/PostgreSQL; SQLite's write transaction is already
//!    exclusive). If another host's relay holds it, the firing does nothing:
//!    one relay per shard at a time, so no row is published twice and no
//!    aggregate's order depends on which host claimed what.
//! 2. reads the window: the oldest `batch_size` pending rows (not
//!    published, not dead-lettered) by id, an index range scan whatever the
//!    backlog behind it.
//! 3. plans it ([`plan`]): per aggregate the run of its rows in id order,
//!    held back behind a row in backoff; snapshot events (`snapshot_types`)
//!    coalesced to their aggregate's newest row.
//! 4. produces in waves: wave `k` holds the `k`-th row of every run whose
//!    earlier rows were acknowledged, so a failed message stops the rest of
//!    its aggregate and a retry never reorders an aggregate's events.
//! 5. writes the outcome in one batch: acknowledged and superseded rows
//!    marked published; a refusal by the broker (rejected, topic not
//!    granted) spends one attempt of the row's budget with an exponential
//!    backoff and dead-letters it at the end of the budget. A broker that is
//!    unreachable (or a producer whose breaker is open) is backlog: nothing
//!    is written, no budget is spent, and the next firing tries again.
//!
//! Configuration (the component's variables, `[component.NAME.variables]`):
//! `topic` (default `payments`), `retry_budget` (refusals before
//! dead-lettering, default 10), `backoff_base_ms` (default 1000; doubles per
//! refusal, capped at 5 min), `snapshot_types` (comma-separated event types
//! that coalesce, default `settlement.updated`; empty for none).

mod plan;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use payfn_sdk::bindings::exports::payfn::host::timer_handler::Tick;
use payfn_sdk::kafka::{self, Error, Message};
use payfn_sdk::sql::{self, Batch, Value};
use payfn_sdk::{variables, ApiError};
use plan::Pending;

payfn_sdk::timer_step!(on_tick);

const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Rows per `UPDATE ... WHERE id IN (...)`: well under every dialect's
/// limit on parameters.
const MARK_CHUNK: usize = 500;

fn on_tick(tick: Tick) -> Result<String, String> {
    relay(&tick).map_err(|e| format!("{}: {}", e.code, e.message))
}

/// The relay's settings, from the component's variables.
struct Config {
    topic: String,
    budget: i64,
    backoff_base_ms: u64,
    snapshot_types: Vec<String>,
}

impl Config {
    fn from_variables() -> Self {
        let snapshot_types = variables::parse_or("snapshot_types", "settlement.updated".to_string());
        Config {
            topic: variables::parse_or("topic", "payments".to_string()),
            budget: variables::parse_or("retry_budget", 10),
            backoff_base_ms: variables::parse_or("backoff_base_ms", 1000),
            snapshot_types: snapshot_types
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
        }
    }

    /// When a row refused for the `attempts`-th time may be tried again.
    fn next_attempt_ms(&self, now_ms: i64, attempts: i64) -> i64 {
        let exponent = u32::try_from(attempts - 1).unwrap_or(0).min(20);
        let delay =
            Duration::from_millis(self.backoff_base_ms.saturating_mul(1 << exponent)).min(BACKOFF_CAP);
        now_ms.saturating_add(delay.as_millis() as i64)
    }
}

/// A row of the window with what its message needs.
struct Row {
    pending: Pending,
    event_id: String,
    merchant_id: i64,
    payload: String,
    traceparent: Option<String>,
    retry_count: i64,
}

impl Row {
    fn message(&self, topic: &str) -> Message {
        let mut headers = vec![
            ("event-id".to_string(), self.event_id.clone().into_bytes()),
            ("event-type".to_string(), self.pending.event_type.clone().into_bytes()),
            ("merchant-id".to_string(), self.merchant_id.to_string().into_bytes()),
        ];
        if let Some(trace) = &self.traceparent {
            headers.push(("traceparent".to_string(), trace.clone().into_bytes()));
        }
        Message {
            topic: topic.to_string(),
            key: Some(self.pending.aggregate_id.clone().into_bytes()),
            value: self.payload.clone().into_bytes(),
            headers,
        }
    }
}

/// What a firing did, for its report line.
#[derive(Default)]
struct Tally {
    published: usize,
    superseded: usize,
    /// Rows not sent or not acknowledged because the broker is unreachable.
    waiting: usize,
    refused: usize,
    dead_lettered: usize,
    held: usize,
}

fn relay(tick: &Tick) -> Result<String, ApiError> {
    if !take_lease()? {
        return Ok(format!("shard {}: another relay holds the lease", tick.shard));
    }
    let config = Config::from_variables();
    let window = read_window(tick.batch_size)?;
    if window.is_empty() {
        return Ok(String::new());
    }
    let now = SystemTime::now();
    let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let now_text = humantime::format_rfc3339_millis(now).to_string();

    let pending: Vec<Pending> = window.iter().map(|r| r.pending.clone()).collect();
    let plan = plan::plan(&pending, now_ms, &config.snapshot_types);
    let mut tally = Tally { held: plan.held, superseded: plan.superseded.len(), ..Tally::default() };
    let mut writes = Batch::new();
    mark_superseded(&mut writes, &window, &plan.superseded, &now_text);

    // Waves: the k-th row of every run still going.
    let mut published = Vec::new();
    let mut going = vec![true; plan.runs.len()];
    for k in 0.. {
        let wave: Vec<(usize, usize)> = plan
            .runs
            .iter()
            .enumerate()
            .filter(|(r, run)| going[*r] && k < run.len())
            .map(|(r, run)| (r, run[k]))
            .collect();
        if wave.is_empty() {
            break;
        }
        let messages: Vec<Message> = wave.iter().map(|&(_, i)| window[i].message(&config.topic)).collect();
        for (&(r, i), result) in wave.iter().zip(kafka::produce(&messages)) {
            let row = &window[i];
            match result {
                Ok(_) => published.push(row.pending.id),
                Err(error) => {
                    going[r] = false;
                    let rest = plan.runs[r].len() - k;
                    match error {
                        Error::Unavailable(_) => tally.waiting += rest,
                        Error::Rejected(_) | Error::TopicNotGranted(_) => {
                            tally.held += rest - 1;
                            if record_refusal(&mut writes, &config, row, &error, now_ms, &now_text) {
                                tally.dead_lettered += 1;
                            } else {
                                tally.refused += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    tally.published = published.len();
    mark_published(&mut writes, &published, &now_text, None);
    writes.run()?;

    let t = tally;
    Ok(format!(
        "shard {}: published {}, superseded {}, waiting for the broker {}, refused {}, dead-lettered {}, held {}",
        tick.shard, t.published, t.superseded, t.waiting, t.refused, t.dead_lettered, t.held
    ))
}

/// Takes this shard's relay lease for the firing's transaction; `false`
/// when another relay holds it.
fn take_lease() -> Result<bool, ApiError> {
    let rows = sql::query(
        &format!("SELECT id FROM outbox_relay_lease WHERE id = 1{}", sql::skip_locked_suffix()),
        &[],
    )?;
    if rows.is_empty() && sql::skip_locked_suffix().is_empty() {
        // Without SKIP LOCKED an empty answer is a missing row, not a holder.
        return Err(ApiError::internal(
            "outbox_relay_lease has no row; the shard's migrations are incomplete",
        ));
    }
    Ok(!rows.is_empty())
}

/// The oldest `limit` pending rows, in id order: a range of the
/// `outbox_pending (published, dead_lettered, id)` index. Rows of a
/// merchant whose events this shard holds back (`moving_merchants`: the
/// other side of a move publishes them) are left alone.
fn read_window(limit: u32) -> Result<Vec<Row>, ApiError> {
    let rows = sql::query(
        "SELECT id, event_id, aggregate_id, merchant_id, event_type, payload, traceparent, retry_count, \
                next_attempt_at_ms \
         FROM outbox WHERE published = 0 AND dead_lettered = 0 \
           AND NOT EXISTS (SELECT 1 FROM moving_merchants m \
                           WHERE m.merchant_id = outbox.merchant_id AND m.hold_events = 1) \
         ORDER BY id LIMIT ?",
        &[i64::from(limit).into()],
    )?;
    rows.iter()
        .map(|row| {
            Ok(Row {
                pending: Pending {
                    id: row.i64("id")?,
                    aggregate_id: row.text("aggregate_id")?,
                    event_type: row.text("event_type")?,
                    next_attempt_at_ms: row.i64("next_attempt_at_ms")?,
                },
                event_id: row.text("event_id")?,
                merchant_id: row.i64("merchant_id")?,
                payload: row.text("payload")?,
                traceparent: row.opt_text("traceparent")?,
                retry_count: row.i64("retry_count")?,
            })
        })
        .collect()
}

/// Marks superseded snapshot rows done: published (they need no sending)
/// and pointing at the newer row that carries their state.
fn mark_superseded(writes: &mut Batch, window: &[Row], superseded: &[(usize, usize)], now: &str) {
    let mut by_newer: Vec<(i64, Vec<i64>)> = Vec::new();
    for &(old, newer) in superseded {
        let newer = window[newer].pending.id;
        match by_newer.iter_mut().find(|(n, _)| *n == newer) {
            Some((_, olds)) => olds.push(window[old].pending.id),
            None => by_newer.push((newer, vec![window[old].pending.id])),
        }
    }
    for (newer, olds) in by_newer {
        mark_published(writes, &olds, now, Some(newer));
    }
}

/// Spends one attempt of `row`'s budget after a refusal by the broker;
/// `true` if that was the last and the row is dead-lettered.
fn record_refusal(
    writes: &mut Batch,
    config: &Config,
    row: &Row,
    error: &Error,
    now_ms: i64,
    now: &str,
) -> bool {
    let attempts = row.retry_count + 1;
    let give_up = attempts >= config.budget;
    writes.push(
        "UPDATE outbox SET retry_count = ?, last_retry_at = ?, next_attempt_at_ms = ?, last_error = ?, \
         dead_lettered = ? WHERE id = ?",
        vec![
            attempts.into(),
            now.into(),
            config.next_attempt_ms(now_ms, attempts).into(),
            format!("{error:?}").into(),
            // Flags are integer columns on every dialect.
            i64::from(give_up).into(),
            row.pending.id.into(),
        ],
        1,
    );
    give_up
}

/// Marks rows published (`superseded_by`: the newer row sent in their
/// place): one statement per chunk instead of one per row.
fn mark_published(writes: &mut Batch, ids: &[i64], now: &str, superseded_by: Option<i64>) {
    for chunk in ids.chunks(MARK_CHUNK) {
        let mut params: Vec<Value> = vec![now.into(), superseded_by.into()];
        params.extend(chunk.iter().map(|&id| id.into()));
        writes.push(
            format!(
                "UPDATE outbox SET published = 1, published_at = ?, superseded_by = ? WHERE id IN ({})",
                placeholders(chunk.len())
            ),
            params,
            // The lease and the firing's transaction keep every row of the
            // window pending until this commits: each one is there to mark.
            chunk.len() as u64,
        );
    }
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}
