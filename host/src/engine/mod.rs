//! The wasmtime side: one engine, compiled components, one store per
//! invocation.
//!
//! Setup for speed and safety (DESIGN.md decision 9): pooling allocator,
//! an `InstancePre` per component version, an on-disk AOT cache keyed by
//! content hash, epoch deadlines and a memory limit per store. A guest that
//! traps, runs away or exhausts its memory fails its own invocation only.

//!
//! Every trigger's invocation goes through one envelope ([`envelope`]): the
//! trigger picks the version and opens the shard transaction, the envelope
//! opens the span, builds the store from the capabilities the component is
//! granted, runs the export, records the metrics, and settles the
//! transaction. The engine names no capability: it asks
//! [`Capabilities`] for everything.

mod compile;
mod component;
mod config;
mod envelope;
mod invoke;
mod state;

pub use component::{loaded_versions, ComponentSpec, LoadedComponent, TriggerKind};
pub use config::EngineConfig;
pub use envelope::{Invocation, Outcome, Settled, Trace};
pub use invoke::{HttpOutput, InvokeError};
pub use state::InvocationState;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::capabilities::Capabilities;
use crate::metrics::Metrics;

/// Bytes of each pooled linear memory reset in place, not released to the
/// kernel, when an instance is freed.
const KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The shared wasmtime engine plus what every invocation needs from it.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    config: Arc<EngineConfig>,
    cache_dir: PathBuf,
    /// One permit per pooled instance: a burst beyond the pool waits for a
    /// slot (up to the invocation deadline) instead of failing at once.
    slots: Arc<tokio::sync::Semaphore>,
    /// What components may be granted, started for this host.
    capabilities: Arc<Capabilities>,
    /// Where every invocation is counted and timed.
    metrics: Metrics,
}

impl Engine {
    /// Builds the engine and starts the epoch ticker.
    pub fn new(
        config: EngineConfig,
        cache_dir: PathBuf,
        capabilities: Capabilities,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances.saturating_mul(4))
            .total_memories(config.max_instances.saturating_mul(2))
            .total_tables(config.max_instances.saturating_mul(2))
            // A WASIp3 store usually runs on one fiber stack but takes
            // another whenever a guest task waits while other work of the
            // store must run: room for two per instance (virtual memory,
            // touched only when used).
            .total_stacks(config.max_instances.saturating_mul(2))
            .max_memory_size(config.memory_limit_bytes())
            // Reset a freed instance's first pages with memset instead of
            // madvise: no syscall, no TLB shootdown across cores and no page
            // faults when the next instance touches them again (madvise and
            // the faults were a fifth of the host's CPU under load,
            // docs/BENCHMARKS.md). Covers a Rust guest's stack and small heap.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES / 16);

        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true).epoch_interruption(true).allocation_strategy(if config.pooling {
            InstanceAllocationStrategy::Pooling(pool)
        } else {
            InstanceAllocationStrategy::OnDemand
        });
        let inner =
            wasmtime::Engine::new(&wasm).map_err(anyhow::Error::from).context("configuring wasmtime")?;

        // A plain thread: the ticker must keep going even if every tokio
        // worker is busy running guests.
        let weak = inner.weak();
        std::thread::Builder::new()
            .name("payfn-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("starting the epoch thread")?;

        std::fs::create_dir_all(&cache_dir)
            .with_context(|| format!("creating compile cache {}", cache_dir.display()))?;
        let slots = Arc::new(tokio::sync::Semaphore::new(config.max_instances as usize));
        Ok(Self {
            inner,
            config: Arc::new(config),
            cache_dir,
            slots,
            capabilities: Arc::new(capabilities),
            metrics,
        })
    }

    /// The invocation deadline in epoch ticks (at least one).
    fn deadline_ticks(&self) -> u64 {
        (self.config.timeout().as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
}
