//! wit-bindgen output for the `payfn:host/http-step` world, kept in one module.
#![allow(missing_docs, clippy::all)]

wit_bindgen::generate!({
    world: "payfn:host/http-step",
    path: "../../wit",
    generate_all,
    pub_export_macro: true,
    export_macro_name: "export_http_step",
    default_bindings_module: "payfn_sdk::bindings",
});
