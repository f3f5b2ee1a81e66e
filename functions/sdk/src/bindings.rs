//! wit-bindgen output for the `payfn:host/guest` world (payfn's imports,
//! the timer and event exports), kept in one module. HTTP, variables,
//! key-value and outbound HTTP are spin-sdk's.
#![allow(missing_docs, clippy::all)]

wit_bindgen::generate!({
    world: "payfn:host/guest",
    path: "../../wit",
    generate_all,
    pub_export_macro: true,
    export_macro_name: "export_step",
    default_bindings_module: "payfn_sdk::bindings",
});
