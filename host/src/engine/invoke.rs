//! Running one invocation in its own store: HTTP, timer or event.
//!
//! Every kind follows the same steps: wait for a pool slot, build the store
//! with the capabilities the trigger bound, run the export under the epoch
//! deadline (plus an outer timeout for time spent in host calls), and hand
//! the shard transaction back whatever happened.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use super::component::Entry;
use super::state::{MemoryLimiter, NoOutboundHttp};
use super::{Engine, InvocationState, LoadedComponent};
use crate::bindings::event::exports::payfn::host::event_handler::Event;
use crate::bindings::timer::exports::payfn::host::timer_handler::Tick;
use crate::capabilities::kafka::{Broker, KafkaState};
use crate::capabilities::kv::{Kv, KvState};
use crate::capabilities::log::LogState;
use crate::capabilities::sql::{ShardTx, SqlState};

/// How long after the guest returns its response body may still be in flight.
const BODY_GRACE: Duration = Duration::from_secs(1);

/// What a trigger binds for one invocation, whatever its kind.
pub struct Bindings {
    /// Tags the invocation's logs (an HTTP request id, or a trigger's own).
    pub request_id: String,
    pub sql: SqlState,
    pub kv: Kv,
    pub broker: Option<Broker>,
}

impl Bindings {
    /// No shard and no broker: for an invocation that must not touch either
    /// (a deploy's start-up check, a benchmark of the engine alone).
    pub fn unbound(request_id: String, kv: Kv) -> Self {
        Self { request_id, sql: SqlState::unbound(), kv, broker: None }
    }
}

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

/// The outcome of one invocation plus the transaction, to commit or roll back.
pub type Outcome<T> = (Result<T, InvokeError>, Option<ShardTx>);

impl Engine {
    /// Runs `component`'s `wasi:http/incoming-handler` on `request`.
    pub async fn invoke_http(
        &self,
        component: &LoadedComponent,
        bindings: Bindings,
        request: http::Request<Full<Bytes>>,
    ) -> Outcome<HttpOutput> {
        let Entry::Http(pre) = &component.entry else {
            return (Err(InvokeError::WrongTrigger), bindings.sql.tx);
        };
        let pre = pre.clone();
        self.invoke(component, bindings, move |store| {
            Box::pin(async move {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                let req =
                    store.data_mut().http().new_incoming_request(Scheme::Http, request).map_err(failed)?;
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
        })
        .await
    }

    /// Runs `component`'s `timer-handler` for one firing.
    pub async fn invoke_timer(
        &self,
        component: &LoadedComponent,
        bindings: Bindings,
        tick: Tick,
    ) -> Outcome<String> {
        let Entry::Timer(pre) = &component.entry else {
            return (Err(InvokeError::WrongTrigger), bindings.sql.tx);
        };
        let pre = pre.clone();
        self.invoke(component, bindings, move |store| {
            Box::pin(async move {
                let instance = pre.instantiate_async(&mut *store).await.map_err(instantiating)?;
                let result = instance.payfn_host_timer_handler().call_on_tick(&mut *store, &tick).await?;
                Ok(result.map_err(InvokeError::Refused))
            })
        })
        .await
    }

    /// Runs `component`'s `event-handler` on a run of consumed records (all
    /// on the shard `bindings` holds a transaction of).
    pub async fn invoke_events(
        &self,
        component: &LoadedComponent,
        bindings: Bindings,
        events: Vec<Event>,
    ) -> Outcome<()> {
        let Entry::Event(pre) = &component.entry else {
            return (Err(InvokeError::WrongTrigger), bindings.sql.tx);
        };
        let pre = pre.clone();
        self.invoke(component, bindings, move |store| {
            Box::pin(async move {
                let instance = pre.instantiate_async(&mut *store).await.map_err(instantiating)?;
                let result =
                    instance.payfn_host_event_handler().call_handle_events(&mut *store, &events).await?;
                // An index outside the run names no event.
                Ok(result.map_err(|refusal| match refusal.event.map(|at| at as usize) {
                    Some(at) if at < events.len() => InvokeError::RefusedEvent(at, refusal.message),
                    _ => InvokeError::Refused(refusal.message),
                }))
            })
        })
        .await
    }

    /// Instantiates `component` once, in a store with every capability
    /// unbound, and runs nothing else: a version that traps or exhausts its
    /// memory while starting is refused before it serves anyone.
    pub async fn check_instantiates(&self, component: &LoadedComponent, kv: Kv) -> Result<(), InvokeError> {
        let bindings = Bindings::unbound(format!("deploy-check:{}", component.short_digest()), kv);
        let entry = match &component.entry {
            Entry::Http(pre) => Entry::Http(pre.clone()),
            Entry::Timer(pre) => Entry::Timer(pre.clone()),
            Entry::Event(pre) => Entry::Event(pre.clone()),
        };
        let (result, _) = self
            .invoke(component, bindings, move |store| {
                Box::pin(async move {
                    match entry {
                        Entry::Http(pre) => pre.instantiate_async(&mut *store).await.map(drop),
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

    /// The steps every kind shares.
    async fn invoke<T>(
        &self,
        component: &LoadedComponent,
        bindings: Bindings,
        run: impl Runner<T>,
    ) -> Outcome<T> {
        let slot = tokio::time::timeout(self.config.timeout(), self.slots.clone().acquire_owned()).await;
        let Ok(Ok(_slot)) = slot else {
            let busy = InvokeError::Unavailable("every pooled instance stayed busy".into());
            return (Err(busy), bindings.sql.tx);
        };
        let mut store = self.store(component, bindings);
        // Host calls (a slow shard) are not interrupted by the epoch; the
        // outer timeout covers them.
        let deadline = self.config.timeout() + Duration::from_millis(100);
        let result = match tokio::time::timeout(deadline, run(&mut store)).await {
            Err(_) => Err(InvokeError::Timeout(self.config.timeout())),
            Ok(Err(e)) if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) => {
                Err(InvokeError::Timeout(self.config.timeout()))
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
        let tx = store.into_data().sql.tx.take();
        (result, tx)
    }

    fn store(&self, component: &LoadedComponent, bindings: Bindings) -> Store<InvocationState> {
        let Bindings { request_id, sql, kv, broker } = bindings;
        let mut wasi = WasiCtx::builder();
        wasi.envs(&component.spec.environment);
        let state = InvocationState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: NoOutboundHttp,
            limiter: MemoryLimiter { limit: self.config.memory_limit_bytes(), hit: false },
            sql,
            kv: KvState::new(kv, &component.spec.name),
            log: LogState { component: component.spec.name.clone(), request_id },
            kafka: KafkaState { broker, topics: component.spec.kafka_topics.clone() },
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

/// A function running the export on a prepared store.
trait Runner<T>:
    for<'s> FnOnce(&'s mut Store<InvocationState>) -> Pin<Box<dyn Future<Output = RunResult<T>> + Send + 's>>
{
}

impl<T, F> Runner<T> for F where
    F: for<'s> FnOnce(
        &'s mut Store<InvocationState>,
    ) -> Pin<Box<dyn Future<Output = RunResult<T>> + Send + 's>>
{
}

fn failed(e: wasmtime::Error) -> InvokeError {
    InvokeError::Failed(format!("{e:#}"))
}

fn instantiating(e: wasmtime::Error) -> wasmtime::Error {
    e.context("instantiating the component")
}
