//! Guest-side helpers shared by every payfn component, on spin-sdk.
//!
//! A payment step is a plain function from [`http::Request`] to
//! [`http::Response`]; [`http_step!`] serves it through spin-sdk's
//! `#[http_service]` (`wasi:http/handler@0.3.0`), so a step crate depends on
//! `spin-sdk` beside this one. [`timer_step!`], [`event_step!`] and
//! [`event_batch_step!`] export payfn's own timer and event handlers, for
//! which Spin has no interface. Spin's variables, key-value and outbound
//! HTTP are spin-sdk's ([`spin`]; [`variables`] waits for a synchronous
//! step); payfn's capabilities are here: [`sql`] (the shard transaction),
//! [`kv`] (TTLs, counters, locks), [`kafka`] and [`log`]. [`outbox`] writes
//! events in the same transaction as the rows.

pub mod bindings;
pub mod error;
pub mod http;
pub mod kafka;
pub mod kv;
pub mod log;
pub mod outbox;
pub mod sql;
pub mod variables;

/// spin-sdk, as this SDK uses it: `spin::key_value`, `spin::http::send`...
pub use spin_sdk as spin;

pub use error::ApiError;

/// Serves `handler: fn(&http::Request) -> Result<http::Response, ApiError>`
/// as this component's `wasi:http/handler@0.3.0`, through spin-sdk's
/// `#[http_service]` (the step crate depends on `spin-sdk`).
#[macro_export]
macro_rules! http_step {
    ($handler:path) => {
        // spin-sdk's export links only for wasm32; elsewhere (the
        // workspace's `cargo test`) the handler is only type-checked.
        #[cfg(target_family = "wasm")]
        #[::spin_sdk::http_service]
        async fn payfn_http_step(
            request: ::spin_sdk::http::Request,
        ) -> impl ::spin_sdk::http::IntoResponse {
            $crate::http::serve(request, $handler).await
        }
        #[cfg(not(target_family = "wasm"))]
        const _: fn(&$crate::http::Request) -> Result<$crate::http::Response, $crate::ApiError> = $handler;

        $crate::__step!(
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
        timer: |$tick:pat_param| $timer:expr;
        events: |$events:pat_param| $on_events:expr;
    ) => {
        struct PayfnStep;

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
