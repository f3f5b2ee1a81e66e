//! The data of one store: the engine's core (WASI, wasi-http, the resource
//! table, the memory limiter) and the capabilities' states.

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capabilities::{HoldsStates, States};

/// Everything one invocation's store holds. Capability host implementations
/// each see only their own state in [`States`].
pub struct InvocationState {
    pub(super) wasi: WasiCtx,
    pub(super) http: WasiHttpCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(crate) capabilities: States,
}

impl HoldsStates for InvocationState {
    fn states(&mut self) -> &mut States {
        &mut self.capabilities
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for InvocationState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        // Outbound requests go through the `outbound_http` capability.
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: self.capabilities.http_hooks() }
    }
}

/// Caps linear memory and remembers whether the cap was hit, so a trap that
/// follows can be reported as memory exhaustion.
pub(super) struct MemoryLimiter {
    pub limit: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
