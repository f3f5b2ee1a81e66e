//! `spin.toml`: the Spin application manifest, version 2, plus payfn's grant
//! key.
//!
//! Supported: `spin_manifest_version = 2`, `[application]` (`name`,
//! `version`, `description`, `authors`), `[[trigger.http]]` (`route` with
//! `:param` segments and a trailing `/...`, `component`), and
//! `[component.NAME]` with `source` (a local path), `description`,
//! `environment`, `[component.NAME.build]` (`command`, `workdir`, `watch`),
//! payfn's `capabilities` (the grants) and the keys capabilities read
//! (`kafka_topics`, `variables`, `key_value_stores`; each capability names
//! its own), and the application-level tables capabilities read
//! (`[variables]`). Anything else is refused
//! with a message naming the key, rather than silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::capabilities::Capabilities;
use crate::engine::{ComponentSpec, TriggerKind};

/// A parsed, validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The directory relative paths are resolved against.
    pub dir: PathBuf,
    pub application: Application,
    pub http_triggers: Vec<HttpTrigger>,
    pub timer_triggers: Vec<TimerTrigger>,
    pub kafka_triggers: Vec<KafkaTrigger>,
    pub components: BTreeMap<String, Component>,
    /// The application-level tables capabilities read (`[variables]`), as written.
    pub capability_keys: BTreeMap<String, toml::Value>,
    /// Which kind of trigger uses each component.
    kinds: BTreeMap<String, TriggerKind>,
}

/// Unknown top-level keys are kept for the capabilities (`[variables]`);
/// [`Manifest::parse`] refuses those no capability reads.
#[derive(Debug, Clone, Deserialize)]
struct RawManifest {
    spin_manifest_version: u32,
    application: Application,
    #[serde(default)]
    trigger: Triggers,
    #[serde(default)]
    component: BTreeMap<String, Component>,
    #[serde(flatten)]
    capability_keys: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Triggers {
    #[serde(default)]
    http: Vec<HttpTrigger>,
    #[serde(default)]
    timer: Vec<TimerTrigger>,
    #[serde(default)]
    kafka: Vec<KafkaTrigger>,
}

/// `[application]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    /// Informational; accepted so Spin manifests validate.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    /// Informational; accepted so Spin manifests validate.
    #[serde(default)]
    #[allow(dead_code)]
    pub authors: Vec<String>,
}

/// One `[[trigger.http]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    /// Spin route syntax: `/payments/:id/capture`, `/static/...`.
    pub route: String,
    pub component: String,
}

/// One `[[trigger.timer]]` (payfn's own trigger kind): runs a component
/// every `interval_ms`, once per shard, inside a transaction on that shard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerTrigger {
    pub component: String,
    /// Time between the end of one firing and the start of the next.
    pub interval_ms: u64,
    /// Passed to the component: the most rows one firing should handle.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// One firing per shard per interval; the only mode so far.
    #[serde(default = "default_true")]
    pub per_shard: bool,
}

fn default_batch_size() -> u32 {
    100
}

fn default_true() -> bool {
    true
}

/// One `[[trigger.kafka]]`: runs a component on every record of `topics`,
/// as consumer group `group`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTrigger {
    pub component: String,
    pub topics: Vec<String>,
    pub group: String,
    /// Where a record goes after `max_attempts` failures; default `<topic>.dlq`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Attempts per record before it is dead-lettered.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// If set, only records whose `event-type` header is one of these run
    /// the component; the others are passed over (their offsets still
    /// advance, nothing is recorded: they have no effect to make once).
    /// Saves an instantiation and a write per uninteresting record.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
}

impl KafkaTrigger {
    /// Whether `record_type` (the record's `event-type` header, if any)
    /// runs the component.
    pub fn wants(&self, record_type: Option<&[u8]>) -> bool {
        match (&self.event_types, record_type) {
            (None, _) => true,
            (Some(types), Some(t)) => types.iter().any(|wanted| wanted.as_bytes() == t),
            // Untyped records go to the component (it may dead-letter them).
            (Some(_), None) => true,
        }
    }
}

fn default_attempts() -> u32 {
    5
}

/// One `[component.NAME]`. Keys it does not know are kept for the
/// capabilities; [`Manifest::parse`] refuses those no capability reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Component {
    /// Required; checked after unknown keys, so a misspelt `source` is
    /// named as such rather than reported missing.
    #[serde(default)]
    pub source: PathBuf,
    /// Informational; accepted so Spin manifests validate.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// payfn: the capabilities this component may import.
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub build: Option<Build>,
    /// The keys capabilities read (`kafka_topics`, ...), as written.
    #[serde(flatten)]
    pub capability_keys: BTreeMap<String, toml::Value>,
}

/// `[component.NAME.build]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    pub command: String,
    /// Relative to the manifest's directory.
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Globs (relative to `workdir`, else the manifest's directory) of the
    /// files the build reads: `payfn up --watch` rebuilds and swaps the
    /// component when one changes.
    #[serde(default)]
    pub watch: Vec<String>,
}

impl Manifest {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the manifest {}", path.display()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        Self::parse(&text, dir).with_context(|| format!("invalid manifest {}", path.display()))
    }

    /// Parses and validates manifest text; `dir` anchors relative paths.
    pub fn parse(text: &str, dir: PathBuf) -> anyhow::Result<Self> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if raw.spin_manifest_version != 2 {
            bail!("`spin_manifest_version` must be 2, found {}", raw.spin_manifest_version);
        }
        for key in raw.capability_keys.keys() {
            if Capabilities::owner_of_app_key(key).is_none() {
                bail!("unknown key `{key}`");
            }
        }
        for (name, component) in &raw.component {
            for grant in &component.capabilities {
                if !Capabilities::NAMES.contains(&grant.as_str()) {
                    bail!(
                        "`component.{name}.capabilities`: unknown capability `{grant}` (known: {})",
                        Capabilities::NAMES.join(", ")
                    );
                }
            }
            for key in component.capability_keys.keys() {
                if Capabilities::owner_of_key(key).is_none() {
                    bail!("`component.{name}`: unknown key `{key}`");
                }
            }
            if component.source.as_os_str().is_empty() {
                bail!("`component.{name}`: missing key `source`");
            }
        }
        let mut seen = Vec::new();
        for trigger in &raw.trigger.http {
            if !raw.component.contains_key(&trigger.component) {
                bail!(
                    "`trigger.http` route `{}` names unknown component `{}`",
                    trigger.route,
                    trigger.component
                );
            }
            let pattern = route_pattern(&trigger.route)
                .with_context(|| format!("`trigger.http` route `{}`", trigger.route))?;
            if seen.contains(&pattern) {
                bail!("`trigger.http` route `{}` is declared twice", trigger.route);
            }
            seen.push(pattern);
        }
        let mut kinds: BTreeMap<&str, TriggerKind> = BTreeMap::new();
        let uses = raw
            .trigger
            .http
            .iter()
            .map(|t| (t.component.as_str(), TriggerKind::Http, "trigger.http"))
            .chain(
                raw.trigger.timer.iter().map(|t| (t.component.as_str(), TriggerKind::Timer, "trigger.timer")),
            )
            .chain(
                raw.trigger.kafka.iter().map(|t| (t.component.as_str(), TriggerKind::Event, "trigger.kafka")),
            );
        for (component, kind, key) in uses {
            if !raw.component.contains_key(component) {
                bail!("`{key}` names unknown component `{component}`");
            }
            if kinds.insert(component, kind).is_some_and(|k| k != kind) {
                bail!("component `{component}` is used by two kinds of trigger; give each its own component");
            }
        }
        for timer in &raw.trigger.timer {
            if !timer.per_shard {
                bail!("`trigger.timer` for `{}`: `per_shard = false` is not supported yet", timer.component);
            }
            if timer.interval_ms == 0 {
                bail!("`trigger.timer` for `{}`: `interval_ms` must be positive", timer.component);
            }
        }
        let kinds = kinds.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Ok(Self {
            dir,
            application: raw.application,
            http_triggers: raw.trigger.http,
            timer_triggers: raw.trigger.timer,
            kafka_triggers: raw.trigger.kafka,
            components: raw.component,
            capability_keys: raw.capability_keys,
            kinds,
        })
    }

    /// The engine's view of component `name`.
    pub fn component_spec(&self, name: &str) -> Option<ComponentSpec> {
        let c = self.components.get(name)?;
        Some(ComponentSpec {
            name: name.to_string(),
            source: self.dir.join(&c.source),
            grants: c.capabilities.clone(),
            environment: c.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            capability_keys: c.capability_keys.clone(),
            kind: self.kinds.get(name).copied().unwrap_or(TriggerKind::Http),
        })
    }
}

/// Translates a Spin route into the router's pattern syntax:
/// `:name` segments become `{name}`, a trailing `/...` becomes `/{*rest}`.
pub fn route_pattern(route: &str) -> anyhow::Result<String> {
    if !route.starts_with('/') {
        bail!("must start with `/`");
    }
    let mut out = String::new();
    let segments: Vec<&str> = route.trim_start_matches('/').split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        out.push('/');
        if *segment == "..." {
            if !last {
                bail!("`...` may only end a route");
            }
            out.push_str("{*rest}");
        } else if let Some(name) = segment.strip_prefix(':') {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("bad parameter name `{segment}`");
            }
            out.push('{');
            out.push_str(name);
            out.push('}');
        } else if segment.contains(['{', '}', '*', ':']) {
            bail!("bad segment `{segment}`");
        } else {
            out.push_str(segment);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
spin_manifest_version = 2
[application]
name = "payments"
[[trigger.http]]
route = "/payments/:id/capture"
component = "capture"
[component.capture]
source = "capture.wasm"
capabilities = ["sql", "log"]
[component.capture.build]
command = "cargo build"
watch = ["src/**/*.rs"]
"#;

    #[test]
    fn a_kafka_trigger_with_event_types_runs_only_those_and_untyped_records() {
        let trigger: KafkaTrigger = toml::from_str(
            "component = \"settlement\"\ntopics = [\"payments\"]\ngroup = \"g\"\n\
             event_types = [\"payment.captured\"]",
        )
        .unwrap();
        assert!(trigger.wants(Some(b"payment.captured")));
        assert!(!trigger.wants(Some(b"payment.authorized")));
        assert!(trigger.wants(None));
        let all: KafkaTrigger =
            toml::from_str("component = \"settlement\"\ntopics = [\"payments\"]\ngroup = \"g\"").unwrap();
        assert!(all.wants(Some(b"payment.authorized")));
    }

    #[test]
    fn parses_spin_v2() {
        let m = Manifest::parse(GOOD, PathBuf::from("/app")).unwrap();
        assert_eq!(m.http_triggers[0].component, "capture");
        let spec = m.component_spec("capture").unwrap();
        assert_eq!(spec.source, PathBuf::from("/app/capture.wasm"));
        assert_eq!(spec.grants, vec!["sql", "log"]);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (GOOD.replace("source =", "sauce ="), "sauce"),
            (GOOD.replace("\"sql\", ", "\"sqll\", "), "sqll"),
            (GOOD.replace("component = \"capture\"", "component = \"nope\""), "nope"),
            (GOOD.replace("spin_manifest_version = 2", "spin_manifest_version = 1"), "spin_manifest_version"),
            (GOOD.replace("command =", "comand ="), "comand"),
            // A top-level table no capability reads.
            (format!("{GOOD}\n[variabels]\nx = {{ default = \"1\" }}\n"), "variabels"),
            // A key no capability reads.
            (
                GOOD.replace("capabilities = [", "kafka_topicz = [\"payments\"]\ncapabilities = ["),
                "kafka_topicz",
            ),
        ];
        for (text, key) in cases {
            let err = format!("{:#}", Manifest::parse(&text, PathBuf::from(".")).unwrap_err());
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn keys_capabilities_read_are_kept_for_them() {
        let text = GOOD.replace("capabilities = [", "kafka_topics = [\"payments\"]\ncapabilities = [");
        let spec = Manifest::parse(&text, PathBuf::from(".")).unwrap().component_spec("capture").unwrap();
        let topics = spec.capability_keys.get("kafka_topics").and_then(|v| v.as_array()).map(Vec::len);
        assert_eq!(topics, Some(1));
        let err = format!(
            "{:#}",
            Manifest::parse(&GOOD.replace("source = \"capture.wasm\"\n", ""), PathBuf::from("."))
                .unwrap_err()
        );
        assert!(err.contains("component.capture") && err.contains("source"), "{err}");
    }

    #[test]
    fn spin_routes_translate() {
        assert_eq!(route_pattern("/payments/:id/capture").unwrap(), "/payments/{id}/capture");
        assert_eq!(route_pattern("/static/...").unwrap(), "/static/{*rest}");
        assert_eq!(route_pattern("/payments/authorize").unwrap(), "/payments/authorize");
        assert!(route_pattern("payments").is_err());
        assert!(route_pattern("/a/.../b").is_err());
    }
}
