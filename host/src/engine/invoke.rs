//! Running one export in its own store: HTTP, timer or event.
//!
//! Every kind follows the same steps: wait for a pool slot, build the store
//! with the states of the capabilities the component is granted, run the
//! export under the epoch deadline (plus an outer timeout for time spent in
//! host calls), and hand the shard transaction back whatever happened.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use super::component::Entry;
use super::state::MemoryLimiter;
use super::{Engine, InvocationState, LoadedComponent};
use crate::bindings::event::exports::payfn::host::event_handler::Event;
use crate::bindings::event::EventStepPre;
use crate::bindings::timer::exports::payfn::host::timer_handler::Tick;
use crate::bindings::timer::TimerStepPre;
use crate::capabilities::Lent;
use crate::shards::ShardTx;

/// How long after the guest returns its response body may still be in flight.
const BODY_GRACE: Duration = Duration::from_secs(1);

/// The guest's buffered HTTP response.
pub struct HttpOutput {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Why an invocation produced no result.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The deadline passed (504 `function_timeout`).
    #[error("the function ran past its {0:?} deadline")]
    Timeout(Duration),
    /// The guest trapped, ran out of memory or broke its export's protocol
    /// (500 `function_failed`).
    #[error("the function failed: {0}")]
    Failed(String),
    /// The guest returned an error value (timer and event handlers).
    #[error("the function refused: {0}")]
    Refused(String),
    /// An event handler refused the event at this index of its run.
    #[error("the function refused event {0} of its run: {1}")]
    RefusedEvent(usize, String),
    /// No instance could be had (pool exhausted): 503.
    #[error("no instance available: {0}")]
    Unavailable(String),
    /// The component does not export what this trigger calls.
    #[error("the component does not serve this trigger")]
    WrongTrigger,
}

impl InvokeError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            InvokeError::Timeout(_) => "timeout",
            InvokeError::Failed(_) => "trap",
            InvokeError::Refused(_) | InvokeError::RefusedEvent(..) => "refused",
            InvokeError::Unavailable(_) => "unavailable",
            InvokeError::WrongTrigger => "wrong_trigger",
        }
    }
}

/// An HTTP version's export, WASIp2 or WASIp3: both take the same request
/// and give the same buffered response.
pub(super) enum HttpRunner {
    P2(ProxyPre<InvocationState>),
    P3(ServicePre<InvocationState>),
}

/// A runner of either kind, boxed.
type BoxedRunner<T> = Box<dyn for<'s> FnOnce(&'s mut Store<InvocationState>) -> RunFuture<'s, T> + Send>;

impl HttpRunner {
    /// The HTTP export of `entry`, if it has one.
    pub(super) fn of(entry: &Entry) -> Option<Self> {
        match entry {
            Entry::Http(pre) => Some(Self::P2(pre.clone())),
            Entry::HttpP3(pre) => Some(Self::P3(pre.clone())),
            _ => None,
        }
    }

    /// The run of `request`.
    pub(super) fn with(self, request: http::Request<Full<Bytes>>) -> BoxedRunner<HttpOutput> {
        match self {
            Self::P2(pre) => Box::new(http(pre, request)),
            Self::P3(pre) => Box::new(http_p3(pre, request)),
        }
    }
}

/// The HTTP export's run: `request` in, the buffered response out.
fn http(pre: ProxyPre<InvocationState>, request: http::Request<Full<Bytes>>) -> impl Runner<HttpOutput> {
    move |store: &mut Store<InvocationState>| -> RunFuture<'_, HttpOutput> {
        Box::pin(async move {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let req = store.data_mut().http().new_incoming_request(Scheme::Http, request).map_err(failed)?;
            let out = store.data_mut().http().new_response_outparam(sender).map_err(failed)?;
            let proxy = pre.instantiate_async(&mut *store).await.map_err(instantiating)?;

            // The guest streams its body while it runs, so collect concurrently.
            let receive = async {
                let response = receiver.await.map_err(|_| "the guest set no response".to_string())?;
                let response = response.map_err(|e| format!("the guest answered an error: {e:?}"))?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map_err(|e| format!("response body: {e}"))?.to_bytes();
                Ok::<_, String>(HttpOutput { status: parts.status, headers: parts.headers, body })
            };
            let call = proxy.wasi_http_incoming_handler().call_handle(&mut *store, req, out);
            tokio::pin!(receive, call);
            let mut output = None;
            loop {
                tokio::select! {
                    result = &mut call => { result?; break; }
                    received = &mut receive, if output.is_none() => output = Some(received),
                }
            }
            let output = match output {
                Some(output) => output,
                None => tokio::time::timeout(BODY_GRACE, receive)
                    .await
                    .unwrap_or_else(|_| Err("the guest returned without a complete response".into())),
            };
            Ok(output.map_err(InvokeError::Failed))
        })
    }
}

/// The WASIp3 HTTP export's run (`wasi:http/handler@0.3.0`): the same
/// request in, the buffered response out. The guest writes its body from
/// tasks of its own, which run only inside the store's event loop, so the
/// body is collected there too.
fn http_p3(pre: ServicePre<InvocationState>, request: http::Request<Full<Bytes>>) -> impl Runner<HttpOutput> {
    move |store: &mut Store<InvocationState>| -> RunFuture<'_, HttpOutput> {
        Box::pin(async move {
            let service = pre.instantiate_async(&mut *store).await.map_err(instantiating)?;
            let request = with_authority(request);
            let (request, request_io) = wasmtime_wasi_http::p3::Request::from_http(
                store.data_mut().capabilities.http_hooks(),
                request,
            );
            store
                .run_concurrent(async move |guest| -> RunResult<HttpOutput> {
                    let response = match service.handle(guest, request).await? {
                        Ok(response) => response,
                        Err(code) => {
                            let refused = format!("the guest answered an error: {code:?}");
                            return Ok(Err(InvokeError::Failed(refused)));
                        }
                    };
                    let response = guest.with(|mut access| response.into_http(&mut access, request_io))?;
                    let (parts, body) = response.into_parts();
                    Ok(match body.collect().await {
                        Ok(body) => Ok(HttpOutput {
                            status: parts.status,
                            headers: parts.headers,
                            body: body.to_bytes(),
                        }),
                        Err(e) => Err(InvokeError::Failed(format!("response body: {e}"))),
                    })
                })
                .await?
        })
    }
}

/// The request with an absolute URI: WASIp2 takes the authority from the
/// `host` header, WASIp3 from the URI (and drops `host` as forbidden), so
/// both guests see the same authority.
fn with_authority(mut request: http::Request<Full<Bytes>>) -> http::Request<Full<Bytes>> {
    let authority =
        request.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // A host header that is no authority leaves the URI as it came.
    if let Ok(uri) = http::Uri::builder().scheme("http").authority(authority).path_and_query(path).build() {
        *request.uri_mut() = uri;
    }
    request
}

/// The timer export's run: one firing, its report out.
pub(super) fn timer(pre: TimerStepPre<InvocationState>, tick: Tick) -> impl Runner<String> {
    move |store: &mut Store<InvocationState>| -> RunFuture<'_, String> {
        Box::pin(async move {
            let instance = pre.instantiate_async(&mut *store).await.map_err(instantiating)?;
            let result = instance.payfn_host_timer_handler().call_on_tick(&mut *store, &tick).await?;
            Ok(result.map_err(InvokeError::Refused))
        })
    }
}

/// The event export's run: a run of consumed records.
pub(super) fn events(pre: EventStepPre<InvocationState>, events: Vec<Event>) -> impl Runner<()> {
    move |store: &mut Store<InvocationState>| -> RunFuture<'_, ()> {
        Box::pin(async move {
            let instance = pre.instantiate_async(&mut *store).await.map_err(instantiating)?;
            let result = instance.payfn_host_event_handler().call_handle_events(&mut *store, &events).await?;
            // An index outside the run names no event.
            Ok(result.map_err(|refusal| match refusal.event.map(|at| at as usize) {
                Some(at) if at < events.len() => InvokeError::RefusedEvent(at, refusal.message),
                _ => InvokeError::Refused(refusal.message),
            }))
        })
    }
}

impl Engine {
    /// Instantiates `component` once, in a store with every capability
    /// unbound, and runs nothing else: a version that traps or exhausts its
    /// memory while starting is refused before it serves anyone.
    pub async fn check_instantiates(&self, component: &LoadedComponent) -> Result<(), InvokeError> {
        let lent =
            Lent { request_id: format!("deploy-check:{}", component.short_digest()), shard: None, tx: None };
        let entry = match &component.entry {
            Entry::Http(pre) => Entry::Http(pre.clone()),
            Entry::HttpP3(pre) => Entry::HttpP3(pre.clone()),
            Entry::Timer(pre) => Entry::Timer(pre.clone()),
            Entry::Event(pre) => Entry::Event(pre.clone()),
        };
        let (result, _) = self
            .invoke(component, lent, move |store: &mut Store<InvocationState>| -> RunFuture<'_, ()> {
                Box::pin(async move {
                    match entry {
                        Entry::Http(pre) => pre.instantiate_async(&mut *store).await.map(drop),
                        Entry::HttpP3(pre) => pre.instantiate_async(&mut *store).await.map(drop),
                        Entry::Timer(pre) => pre.instantiate_async(&mut *store).await.map(drop),
                        Entry::Event(pre) => pre.instantiate_async(&mut *store).await.map(drop),
                    }
                    .map_err(instantiating)?;
                    Ok(Ok(()))
                })
            })
            .await;
        result
    }

    /// Runs `run` in a store of its own, with what `lent` lends; gives the
    /// transaction back whatever happened.
    pub(super) async fn invoke<T>(
        &self,
        component: &LoadedComponent,
        mut lent: Lent,
        run: impl Runner<T>,
    ) -> (Result<T, InvokeError>, Option<ShardTx>) {
        let slot = tokio::time::timeout(self.config.timeout(), self.slots.clone().acquire_owned()).await;
        let Ok(Ok(_slot)) = slot else {
            let busy = InvokeError::Unavailable("every pooled instance stayed busy".into());
            return (Err(busy), lent.tx);
        };
        let mut store = self.store(component, &mut lent);
        // Host calls (a slow shard) are not interrupted by the epoch; the
        // outer timeout covers them.
        let deadline = self.config.timeout() + Duration::from_millis(100);
        let result = match tokio::time::timeout(deadline, run(&mut store)).await {
            Err(_) => Err(InvokeError::Timeout(self.config.timeout())),
            Ok(Err(e)) if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) => {
                Err(InvokeError::Timeout(self.config.timeout()))
            }
            // Every pooled fiber stack is in use (WASIp3 stores may take
            // more than one): the host's capacity, not the guest's fault.
            Ok(Err(e)) if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() => {
                Err(InvokeError::Unavailable(format!("{e:#}")))
            }
            Ok(Err(e)) => Err(failed(e)),
            Ok(Ok(result)) => result,
        };
        let result = result.map_err(|e| match e {
            InvokeError::Failed(m) if store.data().limiter.hit => InvokeError::Failed(format!(
                "memory limit of {} MiB exceeded: {m}",
                self.config.memory_limit_mb
            )),
            other => other,
        });
        store.into_data().capabilities.give_back(&mut lent);
        (result, lent.tx)
    }

    fn store(&self, component: &LoadedComponent, lent: &mut Lent) -> Store<InvocationState> {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&component.spec.environment);
        let state = InvocationState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter { limit: self.config.memory_limit_bytes(), hit: false },
            capabilities: self.capabilities.instance(&component.granted, lent),
        };
        let mut store = Store::new(&self.inner, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.deadline_ticks());
        store.epoch_deadline_trap();
        store
    }
}

/// The guest's part of an invocation: `Err` for a wasmtime error (trap,
/// interrupt), `Ok(result)` for what the guest answered.
type RunResult<T> = Result<Result<T, InvokeError>, wasmtime::Error>;

/// The future of a run, borrowing the store.
pub(super) type RunFuture<'s, T> = Pin<Box<dyn Future<Output = RunResult<T>> + Send + 's>>;

/// A function running the export on a prepared store.
pub(super) trait Runner<T>:
    for<'s> FnOnce(&'s mut Store<InvocationState>) -> RunFuture<'s, T>
{
}

impl<T, F> Runner<T> for F where F: for<'s> FnOnce(&'s mut Store<InvocationState>) -> RunFuture<'s, T> {}

fn failed(e: wasmtime::Error) -> InvokeError {
    InvokeError::Failed(format!("{e:#}"))
}

fn instantiating(e: wasmtime::Error) -> wasmtime::Error {
    e.context("instantiating the component")
}
