//! The timer trigger (`[[trigger.timer]]`): runs a component every
//! `interval_ms`, once per shard, each firing inside a write transaction on
//! that shard that commits only if the component returns `ok` and that sees
//! only durable rows.
//!
//! Firings of one (trigger, shard) never overlap: the next starts
//! `interval_ms` after the previous one ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::bindings::timer::exports::payfn::host::timer_handler::Tick;
use crate::capabilities::kafka::Broker;
use crate::capabilities::kv::Kv;
use crate::capabilities::sql::{Shard, ShardTx};
use crate::engine::{Bindings, Engine, LoadedComponent};
use crate::logging::timer_span;
use crate::manifest::TimerTrigger;
use crate::metrics::Metrics;
use crate::versions::live::ComponentSlot;

/// What every firing needs.
#[derive(Clone)]
pub struct TimerContext {
    pub engine: Engine,
    pub kv: Kv,
    pub broker: Broker,
    pub metrics: Metrics,
}

/// Starts one task per shard for `trigger`; they run until the process ends.
pub fn start(
    context: &TimerContext,
    trigger: &TimerTrigger,
    slot: Arc<ComponentSlot>,
    shards: impl Iterator<Item = Arc<Shard>>,
) {
    for shard in shards {
        let context = context.clone();
        let slot = slot.clone();
        let interval = Duration::from_millis(trigger.interval_ms);
        let batch_size = trigger.batch_size;
        tokio::spawn(async move {
            let mut firing: u64 = 0;
            let mut shard_down = false;
            // Fixed rate, not a pause after each firing: the relay's
            // throughput per shard is `batch_size` per interval, however
            // long a firing takes. One that overruns its interval is
            // followed at once by the next (never by a burst of missed ones).
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                firing += 1;
                // Each firing picks the version serving now (canary split by shard).
                let component = slot.pick(shard.name.as_bytes());
                fire(&context, &component, &shard, batch_size, firing, &mut shard_down).await;
            }
        });
    }
}

async fn fire(
    context: &TimerContext,
    component: &LoadedComponent,
    shard: &Shard,
    batch_size: u32,
    firing: u64,
    shard_down: &mut bool,
) {
    let name = &component.spec.name;
    // An outage is logged when it starts and when it ends, not every tick.
    // Durable rows only: the relay publishes what it reads, and an event
    // must never go out for a row a crash could still undo.
    let tx = match shard.begin_durable().await {
        Ok(tx) => tx,
        Err(e) if !*shard_down => {
            *shard_down = true;
            tracing::warn!(component = %name, shard = %shard.name, error = ?e, "timer: shard unavailable; skipping firings until it is back");
            return;
        }
        Err(e) => {
            tracing::debug!(component = %name, shard = %shard.name, error = ?e, "timer: shard still unavailable");
            return;
        }
    };
    if std::mem::take(shard_down) {
        tracing::info!(component = %name, shard = %shard.name, "timer: shard available again");
    }
    let request_id = format!("timer:{name}:{}:{firing}", shard.name);
    let span = timer_span(&request_id, &shard.name, name, component.short_digest());
    run_firing(context, component, shard, tx, request_id, batch_size).instrument(span).await
}

/// One firing in its open transaction, inside its `invocation` span (which
/// names the component and shard on every line logged here).
async fn run_firing(
    context: &TimerContext,
    component: &LoadedComponent,
    shard: &Shard,
    tx: ShardTx,
    request_id: String,
    batch_size: u32,
) {
    let name = &component.spec.name;
    let bindings = Bindings {
        request_id,
        sql: shard.bind(Some(tx)),
        kv: context.kv.clone(),
        broker: Some(context.broker.clone()),
    };
    let tick = Tick { shard: shard.name.clone(), batch_size };
    let started = Instant::now();
    let (result, tx) = context.engine.invoke_timer(component, bindings, tick).await;
    let failure = result.as_ref().err().map(|e| e.kind());
    context.metrics.invoked(name, component.short_digest(), &component.stats, started.elapsed(), failure);
    match (result, tx) {
        (Ok(report), Some(tx)) => match tx.commit().await {
            Ok(()) if report.is_empty() => {}
            Ok(()) => tracing::debug!("{report}"),
            Err(e) => tracing::warn!(error = ?e, "timer: commit failed"),
        },
        (Ok(_), None) => {}
        (Err(e), tx) => {
            if let Some(tx) = tx {
                tx.rollback().await;
            }
            tracing::warn!("timer firing rolled back: {e}");
        }
    }
}
