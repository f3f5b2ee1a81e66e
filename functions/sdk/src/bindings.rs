//! wit-bindgen output for the `payfn:host/step` world (every import and
//! export), kept in one module.
#![allow(missing_docs, clippy::all)]

wit_bindgen::generate!({
    world: "payfn:host/step",
    path: "../../wit",
    generate_all,
    pub_export_macro: true,
    export_macro_name: "export_step",
    default_bindings_module: "payfn_sdk::bindings",
});
