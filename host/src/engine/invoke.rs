//! Running one HTTP invocation in its own store.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use super::state::{MemoryLimiter, NoOutboundHttp};
use super::{Engine, InvocationState, LoadedComponent};
use crate::capabilities::kv::{Kv, KvState};
use crate::capabilities::log::LogState;
use crate::capabilities::sql::{ShardTx, SqlState};

/// How long after the guest returns its response body may still be in flight.
const BODY_GRACE: Duration = Duration::from_secs(1);

/// What the trigger hands to one invocation.
pub struct HttpInvocation {
    pub request_id: String,
    pub request: http::Request<Full<Bytes>>,
    pub sql: SqlState,
    pub kv: Kv,
}

/// The guest's buffered response.
pub struct HttpOutput {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Why an invocation produced no response.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The deadline passed (504 `function_timeout`).
    #[error("the function ran past its {0:?} deadline")]
    Timeout(Duration),
    /// The guest trapped, ran out of memory or broke the wasi:http protocol
    /// (500 `function_failed`).
    #[error("the function failed: {0}")]
    Failed(String),
    /// No instance could be created (pool exhausted): 503.
    #[error("no instance available: {0}")]
    Unavailable(String),
}

impl Engine {
    /// Instantiates `component` in a fresh store, runs its handler on the
    /// request and collects the response. Always hands the shard transaction
    /// back, whatever happened, so the caller decides commit or rollback.
    pub async fn invoke_http(
        &self,
        component: &LoadedComponent,
        invocation: HttpInvocation,
    ) -> (Result<HttpOutput, InvokeError>, Option<ShardTx>) {
        let HttpInvocation {
            request_id,
            request,
            sql,
            kv,
        } = invocation;
        let slot =
            tokio::time::timeout(self.config.timeout(), self.slots.clone().acquire_owned()).await;
        let Ok(Ok(_slot)) = slot else {
            let busy = InvokeError::Unavailable("every pooled instance stayed busy".into());
            return (Err(busy), sql.tx);
        };
        let mut wasi = WasiCtx::builder();
        wasi.envs(&component.spec.environment);
        let state = InvocationState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: NoOutboundHttp,
            limiter: MemoryLimiter {
                limit: self.config.memory_limit_bytes(),
                hit: false,
            },
            sql,
            kv: KvState::new(kv, &component.spec.name),
            log: LogState {
                component: component.spec.name.clone(),
                request_id,
            },
        };
        let mut store = Store::new(&self.inner, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.deadline_ticks());
        store.epoch_deadline_trap();

        let result = self.run(component, &mut store, request).await;
        let result = result.map_err(|e| match e {
            InvokeError::Failed(m) if store.data().limiter.hit => InvokeError::Failed(format!(
                "memory limit of {} MiB exceeded: {m}",
                self.config.memory_limit_mb
            )),
            other => other,
        });
        let tx = store.into_data().sql.tx.take();
        (result, tx)
    }

    async fn run(
        &self,
        component: &LoadedComponent,
        store: &mut Store<InvocationState>,
        request: http::Request<Full<Bytes>>,
    ) -> Result<HttpOutput, InvokeError> {
        let failed = |e: wasmtime::Error| InvokeError::Failed(format!("{e:#}"));
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(failed)?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(failed)?;
        let proxy = component
            .pre
            .instantiate_async(&mut *store)
            .await
            .map_err(|e| InvokeError::Unavailable(format!("{e:#}")))?;

        // The guest streams its body while it runs, so collect concurrently.
        let receive = async {
            let response = receiver
                .await
                .map_err(|_| "the guest set no response".to_string())?;
            let response = response.map_err(|e| format!("the guest answered an error: {e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("response body: {e}"))?
                .to_bytes();
            Ok::<_, String>(HttpOutput {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let call = proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut *store, req, out);
        tokio::pin!(receive, call);

        // Host calls (a slow shard) are not interrupted by the epoch; the
        // outer timeout covers them.
        let deadline = self.config.timeout() + Duration::from_millis(100);
        let mut output = None;
        let called = tokio::time::timeout(deadline, async {
            loop {
                tokio::select! {
                    result = &mut call => return result,
                    received = &mut receive, if output.is_none() => output = Some(received),
                }
            }
        })
        .await;
        match called {
            Err(_) => return Err(InvokeError::Timeout(self.config.timeout())),
            Ok(Err(e)) if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) => {
                return Err(InvokeError::Timeout(self.config.timeout()))
            }
            Ok(Err(e)) => return Err(failed(e)),
            Ok(Ok(())) => {}
        }
        let output = match output {
            Some(output) => output,
            None => tokio::time::timeout(BODY_GRACE, receive)
                .await
                .unwrap_or_else(|_| Err("the guest returned without a complete response".into())),
        };
        output.map_err(InvokeError::Failed)
    }
}
