//! `payfn`: runs payment steps as isolated WebAssembly components.
//!
//! Layout: [`manifest`] and [`runtime_config`] say what to run and on what;
//! [`engine`] owns wasmtime; [`capabilities`] are what components may do,
//! served from the host's backends ([`shards`], [`kv`], [`broker`]);
//! [`triggers`] decide when they run; [`versions`] swaps what runs under live
//! traffic and [`admin`] is its API; [`cli`] is the command line.
//!
//! The binary (`src/main.rs`) is a thin shell over [`cli`]; the library
//! exists so benchmarks (`host/benches/`) can drive the engine directly.

pub mod admin;
mod bindings;
pub mod broker;
pub mod capabilities;
pub mod cli;
pub mod directory;
pub mod engine;
pub mod failed_events;
mod keys;
pub mod kv;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod moves;
mod reconcile;
mod retention;
pub mod runtime_config;
mod secrets;
pub mod shards;
pub mod telemetry;
pub mod tls;
pub mod triggers;
pub mod versions;
