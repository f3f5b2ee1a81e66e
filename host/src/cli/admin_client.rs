//! A client of the admin API for the commands that use it (`deploy`,
//! `activate`, `rollback`, `versions`, `events`): where to reach it, the
//! token, one authenticated JSON call, and the audit trail's actor.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;

use super::AppArgs;

/// How to reach the admin API.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// The admin API's base URL; default: `[admin] listen`, else `[http]
    /// listen`, from the runtime config.
    #[arg(long, env = "PAYFN_ADMIN_URL")]
    admin_url: Option<String>,
    /// A PEM file of the CA that signed an HTTPS admin listener's
    /// certificate, trusted besides the system's roots (a private CA).
    #[arg(long, env = "PAYFN_ADMIN_CA", value_name = "PEM")]
    admin_ca: Option<std::path::PathBuf>,
    /// The admin token; default: the state directory's development token.
    #[arg(long, env = "PAYFN_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long)]
    json: bool,
}

/// An authenticated client of one admin API.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    json: bool,
}

impl Client {
    pub fn new(args: &AdminArgs) -> anyhow::Result<Self> {
        let (config, _) = args.app.runtime_config()?;
        let base = match &args.admin_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let mut addr = config.admin.listen.unwrap_or(config.http.listen);
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                // Both listeners serve TLS when the runtime config gives a certificate.
                let scheme = if config.http.tls_cert.is_some() { "https" } else { "http" };
                format!("{scheme}://{addr}")
            }
        };
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let path = args.app.state_dir().join(crate::admin::DEV_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no admin token: set ${} or pass --token (no development token at {})",
                            crate::admin::TOKEN_ENV,
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(120));
        if let Some(ca) = &args.admin_ca {
            let pem = std::fs::read(ca).with_context(|| format!("--admin-ca {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("--admin-ca {}: not a PEM certificate", ca.display()))?;
            http = http.add_root_certificate(cert);
        }
        let http = http.build()?;
        Ok(Self { base, token, http, json: args.json })
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(reqwest::Body, &str)>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/admin/v1{path}", self.base);
        let mut request =
            self.http.request(method, &url).bearer_auth(&self.token).header("x-payfn-actor", actor());
        if let Some((body, content_type)) = body {
            request = request.header("content-type", content_type).body(body);
        }
        let response =
            request.send().await.with_context(|| format!("cannot reach the admin API at {url}"))?;
        let status = response.status();
        let text = response.text().await.with_context(|| format!("reading the answer of {url}"))?;
        let value: Value = match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(_) if !status.is_success() => bail!("{status}: {}", text.trim()),
            Err(e) => bail!("{url} answered {status} without JSON ({e}): {}", text.trim()),
        };
        if !status.is_success() {
            let message = value["error"]["message"].as_str().unwrap_or("no message");
            bail!("{status}: {message}");
        }
        Ok(value)
    }

    /// Prints `value` if `--json` was given; says whether it did.
    pub fn print_json(&self, value: &Value) -> bool {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        }
        self.json
    }
}

/// `user@host`, for the audit trail.
fn actor() -> String {
    let user =
        std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

/// A JSON request body.
pub fn json_body(text: String) -> (reqwest::Body, &'static str) {
    (text.into(), "application/json")
}

/// `text` cut to `width` characters, with an ellipsis.
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        text.chars().take(width - 1).chain(['…']).collect()
    }
}

/// Percent-encodes a query value.
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
