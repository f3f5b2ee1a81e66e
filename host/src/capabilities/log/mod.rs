//! `log`: a component's log lines, written into the host's log with the
//! component and request id attached.

use crate::bindings::log::{Host, Level};

use super::Capability;

/// The registry entry.
pub const CAPABILITY: Capability = Capability {
    name: "log",
    interface: "payfn:host/log",
    link: |linker| crate::bindings::log::add_to_linker::<_, super::Field<LogState>>(linker, |s| &mut s.log),
};

/// Longest line kept; a component cannot flood the host's log with one call.
const MAX_LINE: usize = 4096;

/// Per-invocation state: the tags every line carries.
pub struct LogState {
    pub component: String,
    pub request_id: String,
}

impl Host for LogState {
    async fn write(&mut self, level: Level, message: String) {
        let message = match message.char_indices().nth(MAX_LINE) {
            Some((cut, _)) => &message[..cut],
            None => message.as_str(),
        };
        let (component, request_id) = (&self.component, &self.request_id);
        match level {
            Level::Trace => {
                tracing::trace!(target: "payfn::guest", component = %component, request_id = %request_id, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "payfn::guest", component = %component, request_id = %request_id, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "payfn::guest", component = %component, request_id = %request_id, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "payfn::guest", component = %component, request_id = %request_id, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "payfn::guest", component = %component, request_id = %request_id, "{message}")
            }
        }
    }
}
