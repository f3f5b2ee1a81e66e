//! The component's variables (Spin's `spin:variables/variables@3.0.0`):
//! the names its `[component.NAME.variables]` declares, as the host
//! resolved them (README, "Spin apps on payfn"). A step reads its settings
//! here rather than from the environment, so operators set them the way
//! they set any Spin app's: `SPIN_VARIABLE_<NAME>` or the runtime config.

mod wit {
    #![allow(missing_docs, clippy::all)]
    wit_bindgen::generate!({
        world: "payfn:spin-apis/step-variables",
        path: "../../wit/spin",
        generate_all,
    });
}

pub use wit::spin::variables::variables::Error;

/// The value of variable `name`. `get` is an async function of the host's:
/// a step is synchronous, so it waits for the answer here.
pub fn get(name: &str) -> Result<String, Error> {
    let name = name.to_string();
    wit_bindgen::block_on(async move { wit::spin::variables::variables::get(name).await })
}

/// Variable `name` parsed as `T`, or `default` when the component does not
/// declare it.
///
/// # Panics
///
/// When it is declared but does not parse, or the host cannot give it: the
/// step traps, and its failure names the variable, rather than running on
/// a default the operator did not choose.
pub fn parse_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match get(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| {
            panic!("variable `{name}` = {text:?} is not a valid {}", std::any::type_name::<T>())
        }),
        Err(Error::Undefined(_)) => default,
        Err(e) => panic!("variable `{name}`: {e:?}"),
    }
}
