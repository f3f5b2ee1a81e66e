//! Capabilities: what a component may do beyond computing.
//!
//! Each capability is one module holding its runtime-config section, its
//! shared state (pools, stores), its per-invocation state, its WIT host
//! implementation and its linker registration. [`REGISTRY`] is the one list
//! the engine consults; adding a capability is a module plus a line there.

pub mod kafka;
pub mod kv;
pub mod log;
pub mod sql;

use std::marker::PhantomData;

use wasmtime::component::{HasData, Linker};

use crate::engine::InvocationState;

/// A capability as the engine sees it.
pub struct Capability {
    /// The grant name used in `spin.toml` (`capabilities = ["sql"]`).
    pub name: &'static str,
    /// The WIT interface, without version, that a component imports.
    pub interface: &'static str,
    /// Links the host implementation into a component's linker.
    pub link: fn(&mut Linker<InvocationState>) -> wasmtime::Result<()>,
}

/// Every capability the host offers.
pub const REGISTRY: &[Capability] = &[sql::CAPABILITY, kv::CAPABILITY, log::CAPABILITY, kafka::CAPABILITY];

/// The capability a component import (e.g. `payfn:host/sql@0.1.0`) asks for.
pub fn for_import(import: &str) -> Option<&'static Capability> {
    let unversioned = import.split('@').next().unwrap_or(import);
    REGISTRY.iter().find(|c| c.interface == unversioned)
}

/// The capability granted under `name`.
pub fn by_name(name: &str) -> Option<&'static Capability> {
    REGISTRY.iter().find(|c| c.name == name)
}

/// Binds a generated `add_to_linker` to one field of the store data: the
/// host implementation of a capability sees only its own state.
pub struct Field<S>(PhantomData<S>);

impl<S: 'static> HasData for Field<S> {
    type Data<'a> = &'a mut S;
}
