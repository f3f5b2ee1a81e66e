//! The timer trigger (`[[trigger.timer]]`): runs a component every
//! `interval_ms`, once per shard, each firing inside a write transaction on
//! that shard that commits only if the component returns `ok` and that sees
//! only durable rows.
//!
//! Firings of one (trigger, shard) never overlap: the next starts
//! `interval_ms` after the previous one ended.

use std::sync::Arc;
use std::time::Duration;

use crate::bindings::timer::exports::payfn::host::timer_handler::Tick;
use crate::engine::{Engine, Invocation, LoadedComponent, Settled, Trace};
use crate::manifest::TimerTrigger;
use crate::shards::Shard;
use crate::versions::live::ComponentSlot;

/// What every firing needs.
#[derive(Clone)]
pub struct TimerContext {
    pub engine: Engine,
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
    let invocation = Invocation {
        component,
        request_id: format!("timer:{name}:{}:{firing}", shard.name),
        merchant: None,
        shard: Some(shard),
        tx: Some(tx),
        trace: Trace::Untraced,
    };
    let tick = Tick { shard: shard.name.clone(), batch_size };
    match context.engine.invoke_timer(invocation, tick).await.commit().await {
        Settled::Committed(report) if !report.is_empty() => {
            tracing::debug!(component = %name, shard = %shard.name, "{report}")
        }
        Settled::Committed(_) | Settled::Discarded(_) => {}
        Settled::CommitFailed(e) => {
            tracing::warn!(component = %name, shard = %shard.name, error = ?e, "timer: commit failed")
        }
        // Rolled back; the envelope logged why, in the firing's span.
        Settled::Failed(_) => {}
    }
}
