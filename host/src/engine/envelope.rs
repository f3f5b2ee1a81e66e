//! The invocation envelope: what every trigger's invocation goes through.
//!
//! The trigger picks the version and opens the shard transaction, each in
//! its own way (the HTTP trigger by merchant and method, the timer per shard
//! on durable rows, the Kafka trigger per run of events). Then the envelope
//! opens the invocation's span, lends the transaction to the capabilities,
//! runs the export, records the metrics and hands the transaction back in an
//! [`Outcome`], which [`Outcome::settle`] commits or rolls back
//! (DESIGN.md rule 2). The Kafka trigger settles itself: several
//! invocations of one run share its transaction with the processed-event
//! records.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use tracing::Instrument;

use super::component::Entry;
use super::invoke::{self, HttpOutput, InvokeError};
use super::{Engine, LoadedComponent};
use crate::bindings::event::exports::payfn::host::event_handler::Event;
use crate::bindings::sql::Error as SqlError;
use crate::bindings::timer::exports::payfn::host::timer_handler::Tick;
use crate::capabilities::Lent;
use crate::logging::{invocation_span, timer_span};
use crate::shards::{Shard, ShardTx};

/// One invocation as a trigger asks for it.
pub struct Invocation<'a> {
    /// The version to run, picked by the trigger (it runs on it to the end,
    /// whatever a deploy swaps in meanwhile).
    pub component: &'a LoadedComponent,
    /// Tags the invocation's logs (an HTTP request id, or a trigger's own).
    pub request_id: String,
    /// The merchant, when the invocation serves one.
    pub merchant: Option<i64>,
    /// The shard it is bound to, if any.
    pub shard: Option<&'a Shard>,
    /// The transaction it runs in, on `shard`.
    pub tx: Option<ShardTx>,
    /// Where its span sits in a trace.
    pub trace: Trace<'a>,
}

/// Where an invocation's span sits in a trace (telemetry.rs).
pub enum Trace<'a> {
    /// A child of the caller's W3C trace context, if it sent one, else a
    /// new trace.
    Continue(Option<&'a [u8]>),
    /// Kept out of trace export: a timer firing serves a whole shard, every
    /// interval, and would drown the traces that matter.
    Untraced,
}

/// What an invocation produced, and its transaction back, to settle.
#[must_use = "an outcome holds a transaction to commit or roll back"]
pub struct Outcome<T> {
    /// The export's answer, or why there is none.
    pub result: Result<T, InvokeError>,
    /// The transaction, unless the invocation lost it (a timeout cut a
    /// statement short) or had none.
    pub tx: Option<ShardTx>,
    /// The invocation's span: settling logs in it.
    span: tracing::Span,
}

/// How an outcome was settled.
#[derive(Debug)]
pub enum Settled<T, E> {
    /// Committed (or there was no transaction): the answer stands.
    Committed(T),
    /// The answer said its writes must not stand (an HTTP 5xx): rolled back.
    Discarded(T),
    /// The invocation failed: rolled back.
    Failed(InvokeError),
    /// The trigger's own write in the transaction failed: rolled back.
    Refused(E),
    /// The commit failed: nothing stands.
    CommitFailed(SqlError),
}

impl<T> Outcome<T> {
    /// Commits when the invocation answered, `keeps` its answer and the
    /// trigger's own writes (`before_commit`: an idempotency record) succeed
    /// in the same transaction; rolls back otherwise.
    pub async fn settle<E>(
        self,
        keeps: impl FnOnce(&T) -> bool,
        before_commit: impl AsyncFnOnce(&T, &mut ShardTx) -> Result<(), E>,
    ) -> Settled<T, E> {
        let Outcome { result, tx, span } = self;
        async move {
            let output = match result {
                Ok(output) => output,
                Err(e) => {
                    if let Some(tx) = tx {
                        tx.rollback().await;
                    }
                    return Settled::Failed(e);
                }
            };
            let Some(mut tx) = tx else { return Settled::Committed(output) };
            if !keeps(&output) {
                tx.rollback().await;
                return Settled::Discarded(output);
            }
            if let Err(e) = before_commit(&output, &mut tx).await {
                tx.rollback().await;
                return Settled::Refused(e);
            }
            match tx.commit().await {
                Ok(()) => Settled::Committed(output),
                Err(e) => Settled::CommitFailed(e),
            }
        }
        .instrument(span)
        .await
    }

    /// [`settle`](Self::settle) keeping every answer, with no writes of the
    /// trigger's own.
    pub async fn commit(self) -> Settled<T, std::convert::Infallible> {
        self.settle(|_| true, async |_, _| Ok(())).await
    }
}

impl Engine {
    /// Runs the component's HTTP handler (`wasi:http/incoming-handler@0.2`
    /// or `wasi:http/handler@0.3`) on `request`. The guest sees the trace
    /// context of the invocation's span.
    pub async fn invoke_http(
        &self,
        invocation: Invocation<'_>,
        mut request: http::Request<Full<Bytes>>,
    ) -> Outcome<HttpOutput> {
        let answered_5xx = |output: &HttpOutput| output.status.is_server_error().then_some("status_5xx");
        let Some(runner) = invoke::HttpRunner::of(&invocation.component.entry) else {
            return wrong_trigger(invocation);
        };
        self.envelope(invocation, answered_5xx, move |lent| {
            // Inside the invocation's span: the guest sees its traceparent.
            crate::telemetry::propagate(request.headers_mut());
            (lent, runner.with(request))
        })
        .await
    }

    /// Runs the component's `timer-handler` for one firing.
    pub async fn invoke_timer(&self, invocation: Invocation<'_>, tick: Tick) -> Outcome<String> {
        let Entry::Timer(pre) = &invocation.component.entry else {
            return wrong_trigger(invocation);
        };
        let pre = pre.clone();
        self.envelope(invocation, |_| None, move |lent| (lent, invoke::timer(pre, tick))).await
    }

    /// Runs the component's `event-handler` on a run of consumed records
    /// (all on the shard the invocation holds a transaction of).
    pub async fn invoke_events(&self, invocation: Invocation<'_>, events: Vec<Event>) -> Outcome<()> {
        let Entry::Event(pre) = &invocation.component.entry else {
            return wrong_trigger(invocation);
        };
        let pre = pre.clone();
        self.envelope(invocation, |_| None, move |lent| (lent, invoke::events(pre, events))).await
    }

    /// The steps every trigger shares. `failure` says which answers count
    /// as failures in the metrics; `prepare` runs inside the span and gives
    /// the export to run.
    async fn envelope<T, R: invoke::Runner<T>>(
        &self,
        invocation: Invocation<'_>,
        failure: impl FnOnce(&T) -> Option<&'static str>,
        prepare: impl FnOnce(Lent) -> (Lent, R),
    ) -> Outcome<T> {
        let Invocation { component, request_id, merchant, shard, tx, trace } = invocation;
        let shard_name = shard.map(|s| s.name.as_str()).unwrap_or_default();
        let (name, version) = (&component.spec.name, component.short_digest());
        let span = match trace {
            Trace::Continue(parent) => {
                let span = invocation_span(&request_id, merchant, shard_name, name, version);
                crate::telemetry::continue_trace(&span, parent);
                span
            }
            Trace::Untraced => timer_span(&request_id, shard_name, name, version),
        };
        let lent = Lent { request_id, shard: shard.map(|s| (s.name.clone(), s.dialect())), tx };
        let started = Instant::now();
        let (result, tx) = async {
            let (lent, run) = prepare(lent);
            self.invoke(component, lent, run).await
        }
        .instrument(span.clone())
        .await;
        let failed = match &result {
            Ok(output) => failure(output),
            Err(e) => {
                span.in_scope(|| log_failure(e));
                Some(e.kind())
            }
        };
        self.metrics.invoked(name, version, &component.stats, started.elapsed(), failed);
        Outcome { result, tx, span }
    }
}

/// Logs why an invocation produced no result, in its span (which names
/// the request, merchant, shard, component and version).
fn log_failure(e: &InvokeError) {
    match e {
        InvokeError::Timeout(limit) => tracing::warn!("function timed out after {limit:?}"),
        InvokeError::Failed(why) => tracing::error!("function failed: {why}"),
        InvokeError::Unavailable(why) => tracing::warn!("no instance: {why}"),
        InvokeError::Refused(_) | InvokeError::RefusedEvent(..) => tracing::warn!("{e}"),
        InvokeError::WrongTrigger => tracing::error!("{e}"),
    }
}

/// The outcome for a component that does not export what the trigger calls.
fn wrong_trigger<T>(invocation: Invocation<'_>) -> Outcome<T> {
    Outcome { result: Err(InvokeError::WrongTrigger), tx: invocation.tx, span: tracing::Span::none() }
}
