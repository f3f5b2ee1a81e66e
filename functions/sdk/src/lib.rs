//! Guest-side helpers shared by every payfn component.
//!
//! A payment step is a plain function from [`http::Request`] to
//! [`http::Response`]; [`http_step!`] exports it as
//! `wasi:http/incoming-handler`; [`timer_step!`], [`event_step!`] and
//! [`event_batch_step!`] do the same for timer- and Kafka-triggered steps. The modules wrap the host capabilities the
//! step's manifest entry grants: [`sql`] (the shard transaction), [`kv`] and
//! [`log`]. [`outbox`] writes events in the same transaction as the rows.

pub mod bindings;
pub mod error;
pub mod http;
pub mod kafka;
pub mod kv;
pub mod log;
pub mod outbox;
pub mod sql;
pub mod variables;

pub use error::ApiError;

/// Exports `handler: fn(&http::Request) -> Result<http::Response, ApiError>`
/// as this component's `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! http_step {
    ($handler:path) => {
        $crate::__step!(
            http: |request, response_out| $crate::http::serve(request, response_out, $handler);
            timer: |_tick| Err($crate::NOT_THIS_TRIGGER.to_string());
            events: |_events| Err($crate::bindings::exports::payfn::host::event_handler::Refusal {
                event: None,
                message: $crate::NOT_THIS_TRIGGER.to_string(),
            });
        );
    };
}

/// Exports `handler: fn(Tick) -> Result<String, String>` as this component's
/// `timer-handler`.
#[macro_export]
macro_rules! timer_step {
    ($handler:path) => {
        $crate::__step!(
            http: |_request, response_out| $crate::http::refuse(response_out);
            timer: |tick| $handler(tick);
            events: |_events| Err($crate::bindings::exports::payfn::host::event_handler::Refusal {
                event: None,
                message: $crate::NOT_THIS_TRIGGER.to_string(),
            });
        );
    };
}

/// Exports `handler: fn(Event) -> Result<(), String>` as this component's
/// `event-handler`: the host's runs of events are handled one event at a
/// time, and a refusal names the event that failed.
#[macro_export]
macro_rules! event_step {
    ($handler:path) => {
        $crate::__step!(
            http: |_request, response_out| $crate::http::refuse(response_out);
            timer: |_tick| Err($crate::NOT_THIS_TRIGGER.to_string());
            events: |events| $crate::each_event(events, $handler);
        );
    };
}

/// Exports `handler: fn(Vec<Event>) -> Result<(), Refusal>` as this
/// component's `event-handler`: the handler sees the host's whole run of
/// events at once (to fold them into fewer writes) and names the event at
/// fault in its [`Refusal`](bindings::exports::payfn::host::event_handler::Refusal).
#[macro_export]
macro_rules! event_batch_step {
    ($handler:path) => {
        $crate::__step!(
            http: |_request, response_out| $crate::http::refuse(response_out);
            timer: |_tick| Err($crate::NOT_THIS_TRIGGER.to_string());
            events: |events| $handler(events);
        );
    };
}

/// Runs `handler` on each of `events` in turn; the first refusal stops the
/// run and names its event.
#[doc(hidden)]
pub fn each_event(
    events: Vec<bindings::exports::payfn::host::event_handler::Event>,
    handler: impl Fn(bindings::exports::payfn::host::event_handler::Event) -> Result<(), String>,
) -> Result<(), bindings::exports::payfn::host::event_handler::Refusal> {
    for (at, event) in events.into_iter().enumerate() {
        handler(event).map_err(|message| bindings::exports::payfn::host::event_handler::Refusal {
            event: Some(at as u32),
            message,
        })?;
    }
    Ok(())
}

/// What a component answers on an export its trigger does not call.
pub const NOT_THIS_TRIGGER: &str = "this component does not serve that trigger";

#[doc(hidden)]
#[macro_export]
macro_rules! __step {
    (
        http: |$req:pat_param, $out:pat_param| $http:expr;
        timer: |$tick:pat_param| $timer:expr;
        events: |$events:pat_param| $on_events:expr;
    ) => {
        struct PayfnStep;

        impl $crate::bindings::exports::wasi::http::incoming_handler::Guest for PayfnStep {
            fn handle(
                $req: $crate::bindings::wasi::http::types::IncomingRequest,
                $out: $crate::bindings::wasi::http::types::ResponseOutparam,
            ) {
                $http
            }
        }

        impl $crate::bindings::exports::payfn::host::timer_handler::Guest for PayfnStep {
            fn on_tick(
                $tick: $crate::bindings::exports::payfn::host::timer_handler::Tick,
            ) -> Result<String, String> {
                $timer
            }
        }

        impl $crate::bindings::exports::payfn::host::event_handler::Guest for PayfnStep {
            fn handle_events(
                $events: Vec<$crate::bindings::exports::payfn::host::event_handler::Event>,
            ) -> Result<(), $crate::bindings::exports::payfn::host::event_handler::Refusal> {
                $on_events
            }
        }

        $crate::bindings::export_step!(PayfnStep with_types_in $crate::bindings);
    };
}
