//! `bindgen!` output for the capability interfaces of `wit/payfn.wit`, kept
//! in one module. The capability modules implement the generated `Host`
//! traits; `wasi:*` comes from wasmtime-wasi and wasmtime-wasi-http.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "payfn:host/capabilities",
    imports: { default: async },
});

pub use self::payfn::host::{kafka, kv, log, sql};

/// The `timer-step` world's export, sharing the capability types above.
pub mod timer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "payfn:host/timer-step",
        imports: { default: async },
        exports: { default: async },
        with: {
            "payfn:host/sql": super::sql,
            "payfn:host/kv": super::kv,
            "payfn:host/log": super::log,
            "payfn:host/kafka": super::kafka,
        },
    });
}

/// The `event-step` world's export, sharing the capability types above.
pub mod event {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "payfn:host/event-step",
        imports: { default: async },
        exports: { default: async },
        with: {
            "payfn:host/sql": super::sql,
            "payfn:host/kv": super::kv,
            "payfn:host/log": super::log,
            "payfn:host/kafka": super::kafka,
        },
    });
}
