//! `log`: a component's log lines, written into the host's log with the
//! component and request id attached.

use std::sync::Arc;

use wasmtime::component::Linker;

use super::{Capability, ComponentConfig, Field, HostResources, Lent};
use crate::bindings::log::{Host, Level};

/// The capability: it keeps nothing of its own.
pub struct Log;

impl Capability for Log {
    const NAME: &'static str = "log";
    const INTERFACES: &'static [&'static str] = &["payfn:host/log"];
    /// The component's name, which every line carries.
    type Component = Arc<str>;
    type State = LogState;

    async fn init(_host: &HostResources) -> anyhow::Result<Self> {
        Ok(Log)
    }

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut LogState,
    ) -> wasmtime::Result<()> {
        crate::bindings::log::add_to_linker::<_, Field<LogState>>(linker, get)
    }

    fn configure(&self, component: &ComponentConfig<'_>) -> anyhow::Result<Arc<str>> {
        Ok(component.name.into())
    }

    fn instance(&self, component: &Arc<str>, lent: &mut Lent) -> LogState {
        LogState { component: component.clone(), request_id: lent.request_id.clone() }
    }
}

/// Longest line kept; a component cannot flood the host's log with one call.
const MAX_LINE: usize = 4096;

/// Per-invocation state: the tags every line carries.
pub struct LogState {
    component: Arc<str>,
    request_id: String,
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
