//! `variables`: Spin's application variables, served as
//! `spin:variables/variables@3.0.0`.
//!
//! - The manifest declares them: `[variables] name = { default = "…" }`, or
//!   `{ required = true }`, either with `secret = true`.
//! - A component sees only its own names: `[component.NAME.variables]`, each
//!   a template over the application's variables (`"https://{{ host }}"`).
//! - Providers give the values, first match wins: the host's environment
//!   (`SPIN_VARIABLE_<NAME>`, upper-cased), the runtime config's
//!   `[variables] values`, then the manifest's `default`.
//!
//! Everything resolves once: the application's variables when the host
//! starts (a required variable no provider sets stops it, named), a
//! component's when a version loads (a template naming an undeclared
//! variable refuses the version, named). A guest's `get` is then a map
//! lookup. Values are never logged: [`Resolved`]'s `Debug` shows names only.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Deserialize;
use wasmtime::component::{Accessor, Linker};

use super::{Capability, ComponentConfig, Field, HostResources, Lent};
use crate::bindings::spin_apis::variables::{Error, Host, HostWithStore};

/// The environment provider's prefix, as in Spin.
pub const ENV_PREFIX: &str = "SPIN_VARIABLE_";

/// The capability: the application's variables, resolved.
pub struct Variables {
    app: Arc<AppVariables>,
}

impl Capability for Variables {
    const NAME: &'static str = "variables";
    const INTERFACES: &'static [&'static str] = &["spin:variables/variables"];
    const MANIFEST_KEYS: &'static [&'static str] = &["variables"];
    const IMPLICIT: bool = true;
    const APP_KEYS: &'static [&'static str] = &["variables"];
    const RUNTIME_SECTIONS: &'static [&'static str] = &["variables"];
    /// The component's variables, resolved.
    type Component = Arc<Resolved>;
    type State = VariablesState;

    async fn init(host: &HostResources) -> anyhow::Result<Self> {
        Ok(Self { app: Arc::new(AppVariables::from_host(host)?) })
    }

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut VariablesState,
    ) -> wasmtime::Result<()> {
        crate::bindings::spin_apis::variables::add_to_linker::<_, Field<VariablesState>>(linker, get)
    }

    fn configure(&self, component: &ComponentConfig<'_>) -> anyhow::Result<Arc<Resolved>> {
        let templates: BTreeMap<String, String> = component.key("variables")?.unwrap_or_default();
        let mut values = BTreeMap::new();
        for (name, template) in templates {
            check_name(&name).with_context(|| format!("`component.{}.variables`", component.name))?;
            let value = self
                .app
                .render(&template)
                .with_context(|| format!("`component.{}.variables.{name}`", component.name))?;
            values.insert(name, value);
        }
        Ok(Arc::new(Resolved(values)))
    }

    fn instance(&self, component: &Arc<Resolved>, _lent: &mut Lent) -> VariablesState {
        VariablesState { resolved: component.clone() }
    }
}

/// One value and whether it derives from a secret.
#[derive(Clone)]
pub struct Value {
    text: String,
    secret: bool,
}

/// Shows whether it is secret, never the value.
impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Value").field("secret", &self.secret).finish_non_exhaustive()
    }
}

impl Value {
    /// The value itself: for the guest, never for a log line.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

/// A set of resolved variables; `Debug` shows the names, never a value.
#[derive(Clone, Default)]
pub struct Resolved(BTreeMap<String, Value>);

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, v)| (k, v.secret))).finish()
    }
}

/// The application's `[variables]`, each resolved through the providers.
pub struct AppVariables {
    values: BTreeMap<String, Value>,
}

/// One `[variables]` entry of the manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Declaration {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
}

/// The runtime config's `[variables]`: the runtime-config provider.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Provider {
    #[serde(default)]
    values: BTreeMap<String, String>,
}

impl AppVariables {
    /// Resolves the manifest's declarations through the environment, the
    /// runtime config and the defaults. Other capabilities that take
    /// templates (outbound hosts) resolve against the same.
    pub fn from_host(host: &HostResources) -> anyhow::Result<Self> {
        let declared: BTreeMap<String, Declaration> = host.app_key("variables")?.unwrap_or_default();
        let provider: Provider = host.runtime_section("variables")?.unwrap_or_default();
        Self::resolve(declared, provider, |key| std::env::var(key).ok())
    }

    fn resolve(
        declared: BTreeMap<String, Declaration>,
        provider: Provider,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        for name in provider.values.keys() {
            if !declared.contains_key(name) {
                bail!(
                    "runtime config `[variables] values.{name}`: no such variable in spin.toml `[variables]`"
                );
            }
        }
        let mut values = BTreeMap::new();
        for (name, declaration) in declared {
            check_name(&name).context("spin.toml `[variables]`")?;
            match (&declaration.default, declaration.required) {
                (Some(_), true) => bail!(
                    "spin.toml `[variables.{name}]`: `default` and `required = true` exclude each other"
                ),
                (None, false) => {
                    bail!("spin.toml `[variables.{name}]`: give it a `default` or `required = true`")
                }
                _ => {}
            }
            let found = env(&format!("{ENV_PREFIX}{}", name.to_uppercase()))
                .or_else(|| provider.values.get(&name).cloned())
                .or(declaration.default);
            let Some(text) = found else {
                bail!(
                    "variable `{name}` is required but has no value: set {ENV_PREFIX}{} in the environment, \
                     or `values.{name}` in the runtime config's `[variables]`",
                    name.to_uppercase()
                );
            };
            values.insert(name, Value { text, secret: declaration.secret });
        }
        Ok(Self { values })
    }

    /// `template` with every `{{ name }}` replaced by that application
    /// variable; the result is secret if any variable it uses is.
    pub fn render(&self, template: &str) -> anyhow::Result<Value> {
        let mut text = String::new();
        let mut secret = false;
        let mut rest = template;
        while let Some(open) = rest.find("{{") {
            text.push_str(&rest[..open]);
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else { bail!("`{{{{` without a closing `}}}}`") };
            let name = after[..close].trim();
            let Some(value) = self.values.get(name) else {
                bail!("`{{{{ {name} }}}}` names no variable in spin.toml `[variables]`");
            };
            text.push_str(&value.text);
            secret |= value.secret;
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            bail!("`}}}}` without an opening `{{{{`");
        }
        text.push_str(rest);
        Ok(Value { text, secret })
    }
}

/// Spin's rule for variable names: lower-case ASCII letters, digits and
/// `_`, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        bail!("`{name}` is not a valid variable name (lower-case letters, digits and `_`, starting with a letter)")
    }
}

fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Per-invocation state: the component's variables.
pub struct VariablesState {
    resolved: Arc<Resolved>,
}

impl VariablesState {
    fn get(&self, name: String) -> Result<String, Error> {
        if !valid_name(&name) {
            return Err(Error::InvalidName(name));
        }
        match self.resolved.0.get(&name) {
            Some(value) => Ok(value.expose().to_string()),
            None => Err(Error::Undefined(format!("no variable `{name}` for this component"))),
        }
    }
}

impl Host for VariablesState {}

/// `get` is a WIT `async func`, so it is served through the store's
/// accessor; the lookup itself never waits.
impl<T: Send> HostWithStore<T> for Field<VariablesState> {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Result<String, Error> {
        accessor.with(|mut access| access.get().get(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(manifest: &str, values: &str, env: &[(&str, &str)]) -> anyhow::Result<AppVariables> {
        let declared = toml::from_str(manifest)?;
        let provider = toml::from_str(values)?;
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        AppVariables::resolve(declared, provider, |k| env.get(k).cloned())
    }

    #[test]
    fn the_environment_beats_the_runtime_config_which_beats_the_default() {
        let manifest = "a = { default = \"da\" }\nb = { default = \"db\" }\nc = { default = \"dc\" }";
        let values = "values = { a = \"ra\", b = \"rb\" }";
        let vars = app(manifest, values, &[("SPIN_VARIABLE_A", "ea")]).unwrap();
        let got = vars.render("{{a}}/{{ b }}/{{  c }}").unwrap();
        assert_eq!(got.expose(), "ea/rb/dc");
    }

    #[test]
    fn a_required_variable_without_a_value_is_named() {
        let err = app("token = { required = true, secret = true }", "", &[]).err().unwrap().to_string();
        assert!(err.contains("`token` is required") && err.contains("SPIN_VARIABLE_TOKEN"), "{err}");
        assert!(app("token = { required = true }", "", &[("SPIN_VARIABLE_TOKEN", "t")]).is_ok());
    }

    #[test]
    fn bad_declarations_and_templates_are_named() {
        for (manifest, values, fragment) in [
            ("Bad = { default = \"x\" }", "", "`Bad` is not a valid variable name"),
            ("a = { default = \"x\", required = true }", "", "exclude each other"),
            ("a = {}", "", "give it a `default`"),
            ("a = { default = \"x\" }", "values = { b = \"y\" }", "values.b"),
            ("a = { default = \"x\", secrett = true }", "", "secrett"),
        ] {
            let err = format!("{:#}", app(manifest, values, &[]).err().unwrap());
            assert!(err.contains(fragment), "{fragment}: {err}");
        }
        let vars = app("a = { default = \"x\" }", "", &[]).unwrap();
        assert!(vars.render("{{ nope }}").unwrap_err().to_string().contains("nope"));
        assert!(vars.render("{{ a").is_err());
        assert!(vars.render("a }}").is_err());
    }

    #[test]
    fn secrets_stay_secret_through_templates_and_debug() {
        let vars = app(
            "token = { required = true, secret = true }\nhost = { default = \"h\" }",
            "",
            &[("SPIN_VARIABLE_TOKEN", "hunter2")],
        )
        .unwrap();
        let header = vars.render("Bearer {{ token }}").unwrap();
        assert!(header.secret && header.expose() == "Bearer hunter2");
        assert!(!vars.render("{{ host }}").unwrap().secret);
        let resolved = Resolved(BTreeMap::from([("auth".to_string(), header)]));
        let shown = format!("{resolved:?}");
        assert!(shown.contains("auth") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_guest_gets_only_its_own_names() {
        let resolved = Resolved(BTreeMap::from([(
            "api_url".to_string(),
            Value { text: "https://x".into(), secret: false },
        )]));
        let state = VariablesState { resolved: Arc::new(resolved) };
        assert_eq!(state.get("api_url".into()).unwrap(), "https://x");
        assert!(matches!(state.get("other".into()), Err(Error::Undefined(_))));
        assert!(matches!(state.get("API_URL".into()), Err(Error::InvalidName(_))));
    }
}
