//! Guest-side helpers shared by every payfn component.
//!
//! A payment step is a plain function from [`http::Request`] to
//! [`http::Response`]; [`http_step!`] exports it as
//! `wasi:http/incoming-handler`. The modules wrap the host capabilities the
//! step's manifest entry grants: [`sql`] (the shard transaction), [`kv`] and
//! [`log`]. [`outbox`] writes events in the same transaction as the rows.

pub mod bindings;
pub mod error;
pub mod http;
pub mod kv;
pub mod log;
pub mod outbox;
pub mod sql;

pub use error::ApiError;

/// Exports `handler: fn(http::Request) -> http::Response` as this
/// component's `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! http_step {
    ($handler:path) => {
        struct PayfnHttpStep;

        impl $crate::bindings::exports::wasi::http::incoming_handler::Guest for PayfnHttpStep {
            fn handle(
                request: $crate::bindings::wasi::http::types::IncomingRequest,
                response_out: $crate::bindings::wasi::http::types::ResponseOutparam,
            ) {
                $crate::http::serve(request, response_out, $handler)
            }
        }

        $crate::bindings::export_http_step!(PayfnHttpStep with_types_in $crate::bindings);
    };
}
