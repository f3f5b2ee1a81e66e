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

/// Spin's interfaces (`wit/spin`), served by the `variables` and `key_value`
/// capabilities. Their functions are WIT `async func`s, so their host side
/// is `HostWithStore`: each reaches its state through the store's accessor
/// and awaits backends outside it.
pub mod spin_apis {
    wasmtime::component::bindgen!({
        path: "../wit/spin",
        world: "payfn:spin-apis/spin-apis",
        imports: {
            // Creating the stream can fail in the store (table full): a trap.
            "spin:key-value/key-value.[method]store.get-keys": async | store | trappable,
            default: async | store,
        },
        with: {
            "spin:key-value/key-value.store": crate::capabilities::key_value::OpenStore,
        },
    });

    pub use self::spin::key_value::key_value;
    pub use self::spin::variables::variables;
}
