//! The data of one store: the engine's core (WASI, wasi-http, the resource
//! table, the memory limiter) and the capabilities' states.

use std::future::Future;

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::capabilities::{HoldsStates, States};

/// Everything one invocation's store holds. Capability host implementations
/// each see only their own state in [`States`].
pub struct InvocationState {
    pub(super) wasi: WasiCtx,
    pub(super) http: WasiHttpCtx,
    pub(super) table: ResourceTable,
    pub(super) hooks: NoOutboundHttp,
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
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Payment steps reach the world only through granted capabilities: an
/// outbound `wasi:http` request is refused (the WASI context likewise grants
/// no sockets and no files).
pub(super) struct NoOutboundHttp;

type HttpResult<T> = Result<T, wasmtime_wasi_http::Error>;
type IoFuture = Box<dyn Future<Output = HttpResult<()>> + Send>;
type SendFuture = Box<dyn Future<Output = HttpResult<(http::Response<WasiBody>, IoFuture)>> + Send>;

impl WasiHttpHooks for NoOutboundHttp {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _body_done: IoFuture,
    ) -> SendFuture {
        Box::new(async { Err(ErrorCode::HttpRequestDenied.into()) })
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
