//! The component's variables (Spin's `spin:variables/variables@3.0.0`):
//! the names its `[component.NAME.variables]` declares, as the host
//! resolved them (README, "Spin apps on payfn"). A step reads its settings
//! here rather than from the environment, so operators set them the way
//! they set any Spin app's: `SPIN_VARIABLE_<NAME>` or the runtime config.

pub use spin_sdk::variables::Error;

/// The value of variable `name`, from spin-sdk. Its `get` is async; the
/// timer and event steps that read settings are synchronous, so it is
/// waited for here. (An HTTP step is async: await
/// `spin_sdk::variables::get` there.)
pub fn get(name: &str) -> Result<String, Error> {
    let name = name.to_string();
    wit_bindgen::block_on(async move { spin_sdk::variables::get(name).await })
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
