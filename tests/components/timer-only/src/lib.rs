//! Test component: targets the `timer-step` world only, so it exports
//! `payfn:host/timer-handler` and no `wasi:http/incoming-handler`. Deployed
//! as an HTTP step it must be refused with the missing export named.

wit_bindgen::generate!({
    world: "payfn:host/timer-step",
    path: "../../../wit",
    generate_all,
});

struct TimerOnly;

impl exports::payfn::host::timer_handler::Guest for TimerOnly {
    fn on_tick(_tick: exports::payfn::host::timer_handler::Tick) -> Result<String, String> {
        Ok(String::new())
    }
}

export!(TimerOnly);
