//! Triggers: what makes a component run. They ask the engine for an
//! invocation with the capabilities bound and never touch wasmtime directly.

pub mod http;
pub mod kafka;
pub mod timer;
