//! `bindgen!` output for the capability interfaces of `wit/payfn.wit`, kept
//! in one module. The capability modules implement the generated `Host`
//! traits; `wasi:*` comes from wasmtime-wasi and wasmtime-wasi-http.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "payfn:host/capabilities",
    imports: { default: async },
});

pub use payfn::host::{kv, log, sql};
