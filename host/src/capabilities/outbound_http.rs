//! `outbound_http`: a component's outbound HTTP requests (`wasi:http`'s
//! p2 `outgoing-handler` and p3 `client`), only to the hosts its
//! `allowed_outbound_hosts` lists, in Spin's syntax.
//!
//! - Entries: `scheme://host[:port]`, where the scheme may be `*`, the host
//!   `*` or `*.domain`, the port `*` or a range `8000..8100`; with no port,
//!   the scheme's own (80, 443). `{{ name }}` templates resolve against the
//!   application's variables at load. `insecure:allow-all` allows anything.
//! - A request to any other destination fails at once with
//!   `HttpRequestDenied`, logged with the component and the destination
//!   (scheme, host and port only: a URL's path and query may carry secrets).
//! - Requests share one pooled client per host, so connections are reused
//!   across invocations; `https` is verified against the system's roots
//!   plus `[outbound_http] ca_files` (tls/mod.rs); timeouts come from `[outbound_http]` (a guest may
//!   ask for shorter ones); the invocation's `traceparent` goes along while
//!   tracing is exported; `payfn_outbound_requests_total` and
//!   `payfn_outbound_request_duration_seconds` count per destination.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::uri::Scheme;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Deserialize;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::variables::AppVariables;
use super::{Capability, ComponentConfig, HostResources, Lent};

/// The capability: the shared client, the timeouts and the metrics.
pub struct OutboundHttp {
    shared: Arc<Shared>,
    app: AppVariables,
}

/// What every invocation's requests share.
struct Shared {
    client: Client<HttpsConnector<HttpConnector>, WasiBody>,
    config: OutboundConfig,
    requests: Family<RequestLabels, Counter>,
    duration: Family<DestinationLabel, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    component: String,
    /// The allowed-hosts entry the request matched, or `not_allowed`.
    destination: String,
    /// `2xx` .. `5xx`, `timeout`, `error` or `denied`.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
}

/// The runtime config's `[outbound_http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Bound on opening a connection.
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Bound on waiting for the response's head.
    #[serde(with = "humantime_serde_compat")]
    pub first_byte_timeout: Duration,
    /// Bound on a pause between two frames of the response body.
    #[serde(with = "humantime_serde_compat")]
    pub between_bytes_timeout: Duration,
    /// How long an idle pooled connection is kept.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Idle connections kept per destination.
    pub max_idle_per_host: usize,
    /// PEM files of CAs trusted for `https` besides the system's roots
    /// (a private CA in front of an acquirer or a test double).
    pub ca_files: Vec<std::path::PathBuf>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 32,
            ca_files: Vec::new(),
        }
    }
}

/// Durations written as humantime text (`"5s"`, `"250ms"`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?}: {e} (write a duration such as \"500ms\" or \"5s\")"))
        })
    }
}

impl Capability for OutboundHttp {
    const NAME: &'static str = "outbound_http";
    /// Served through wasi:http, which every component is linked to.
    const INTERFACES: &'static [&'static str] = &[];
    const MANIFEST_KEYS: &'static [&'static str] = &["allowed_outbound_hosts"];
    const IMPLICIT: bool = true;
    const RUNTIME_SECTIONS: &'static [&'static str] = &["outbound_http"];
    type Component = Arc<Permission>;
    type State = OutboundState;

    async fn init(host: &HostResources) -> anyhow::Result<Self> {
        let config: OutboundConfig = host.runtime_section("outbound_http")?.unwrap_or_default();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        // The TLS connector takes https; plain http goes straight through.
        connector.enforce_http(false);
        // No ALPN here: the connector sets it from the HTTP versions enabled.
        let tls = crate::tls::client_config(&config.ca_files, &[]).context("[outbound_http] ca_files")?;
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_host)
            .build(connector);
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: Family<DestinationLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        host.metrics.register(
            "outbound_requests",
            "Outbound HTTP requests by component, allowed-hosts entry and outcome",
            requests.clone(),
        );
        host.metrics.register(
            "outbound_request_duration_seconds",
            "Time from an outbound request to its response head, by allowed-hosts entry",
            duration.clone(),
        );
        let shared = Arc::new(Shared { client, config, requests, duration });
        Ok(Self { shared, app: AppVariables::from_host(host)? })
    }

    fn link<T: Send + 'static>(
        _linker: &mut Linker<T>,
        _get: fn(&mut T) -> &mut OutboundState,
    ) -> wasmtime::Result<()> {
        // wasi:http is linked for every component by the engine; this
        // capability supplies its hooks (`States::http_hooks`).
        Ok(())
    }

    fn configure(&self, component: &ComponentConfig<'_>) -> anyhow::Result<Arc<Permission>> {
        let entries: Vec<String> = component.key("allowed_outbound_hosts")?.unwrap_or_default();
        let mut allowed = Vec::new();
        for entry in entries {
            let key = format!("`component.{}.allowed_outbound_hosts`", component.name);
            let rendered = self.app.render(&entry).with_context(|| format!("{key}: {entry:?}"))?;
            allowed.push(AllowedHost::parse(rendered.expose()).with_context(|| format!("{key}: {entry:?}"))?);
        }
        Ok(Arc::new(Permission { component: component.name.into(), allowed }))
    }

    fn instance(&self, permission: &Arc<Permission>, _lent: &mut Lent) -> OutboundState {
        OutboundState { permission: permission.clone(), shared: self.shared.clone() }
    }
}

/// One component version's allowed destinations.
#[derive(Debug)]
pub struct Permission {
    component: Arc<str>,
    allowed: Vec<AllowedHost>,
}

impl Permission {
    /// The entry allowing `scheme://host:port`, if any.
    fn allows(&self, scheme: &str, host: &str, port: u16) -> Option<&AllowedHost> {
        self.allowed.iter().find(|a| a.matches(scheme, host, port))
    }
}

/// One `allowed_outbound_hosts` entry, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowedHost {
    /// As written (after templates): the metrics' destination label.
    text: String,
    /// `None`: any scheme.
    scheme: Option<String>,
    host: HostPattern,
    ports: PortPattern,
}

#[derive(Debug, Clone, PartialEq)]
enum HostPattern {
    Any,
    /// `*.example.com`: any subdomain of it, not the domain itself.
    SubdomainOf(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq)]
enum PortPattern {
    Any,
    Range(u16, u16),
}

impl AllowedHost {
    /// Parses an entry in Spin's syntax.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text == "insecure:allow-all" {
            return Ok(Self {
                text: text.into(),
                scheme: None,
                host: HostPattern::Any,
                ports: PortPattern::Any,
            });
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            bail!("write `scheme://host[:port]` (e.g. `https://api.example.com`), or `insecure:allow-all`");
        };
        let scheme = match scheme {
            "*" => None,
            "http" | "https" => Some(scheme.to_string()),
            other => bail!("scheme `{other}` is not served (http, https or `*`)"),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            bail!("an allowed host has no path");
        }
        if rest == "self" || rest.starts_with("self:") {
            bail!("`self` (requests to the app itself) is not served by payfn");
        }
        // The last `:` splits off a port unless it sits inside an IPv6 literal.
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (rest, None),
        };
        if host.is_empty() {
            bail!("no host");
        }
        let host = match host {
            "*" => HostPattern::Any,
            h if h.starts_with("*.") => HostPattern::SubdomainOf(h[2..].to_ascii_lowercase()),
            h if h.contains('*') => bail!("`*` may only stand for the whole host or lead it as `*.`"),
            h => HostPattern::Exact(h.to_ascii_lowercase()),
        };
        let ports = match (port, scheme.as_deref()) {
            (Some("*"), _) => PortPattern::Any,
            (Some(p), _) => match p.split_once("..") {
                Some((low, high)) => {
                    let (low, high) = (parse_port(low)?, parse_port(high)?);
                    if low > high {
                        bail!("port range `{p}` is empty");
                    }
                    PortPattern::Range(low, high)
                }
                None => {
                    let port = parse_port(p)?;
                    PortPattern::Range(port, port)
                }
            },
            (None, Some("http")) => PortPattern::Range(80, 80),
            (None, Some("https")) => PortPattern::Range(443, 443),
            (None, _) => bail!("with scheme `*`, give a port (or `:*`)"),
        };
        Ok(Self { text: text.into(), scheme, host, ports })
    }

    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let host = host.to_ascii_lowercase();
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::SubdomainOf(domain) => {
                host.strip_suffix(domain.as_str()).is_some_and(|sub| sub.ends_with('.') && sub.len() > 1)
            }
            HostPattern::Exact(exact) => *exact == host,
        };
        let port_ok = match self.ports {
            PortPattern::Any => true,
            PortPattern::Range(low, high) => (low..=high).contains(&port),
        };
        scheme_ok && host_ok && port_ok
    }
}

fn parse_port(text: &str) -> anyhow::Result<u16> {
    text.parse().map_err(|_| anyhow::anyhow!("`{text}` is not a port"))
}

/// Per-invocation state: the component's permission and the shared client;
/// it is the invocation's `wasi:http` hooks.
pub struct OutboundState {
    permission: Arc<Permission>,
    shared: Arc<Shared>,
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundState {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let shared = self.shared.clone();
        let component = self.permission.component.to_string();
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("https").to_string();
        let host = uri.host().unwrap_or("").to_string();
        let port = uri.port_u16().unwrap_or(if uri.scheme() == Some(&Scheme::HTTP) { 80 } else { 443 });
        let count = move |destination: &str, outcome: &str| {
            shared
                .requests
                .get_or_create(&RequestLabels {
                    component: component.clone(),
                    destination: destination.to_string(),
                    outcome: outcome.to_string(),
                })
                .inc();
        };
        let Some(allowed) = self.permission.allows(&scheme, &host, port) else {
            tracing::warn!(
                component = %self.permission.component,
                destination = %format!("{scheme}://{host}:{port}"),
                "outbound request denied: the destination is not in allowed_outbound_hosts"
            );
            count("not_allowed", "denied");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        let destination = allowed.text.clone();
        let shared = self.shared.clone();
        let limits = Limits::of(&shared.config, options);
        if let Some(traceparent) = crate::telemetry::traceparent(&tracing::Span::current()) {
            if let Ok(value) = http::HeaderValue::from_str(&traceparent) {
                request.headers_mut().entry("traceparent").or_insert(value);
            }
        }
        Box::new(async move {
            let started = Instant::now();
            let sent = tokio::time::timeout(limits.first_byte, shared.client.request(request)).await;
            shared
                .duration
                .get_or_create(&DestinationLabel { destination: destination.clone() })
                .observe(started.elapsed().as_secs_f64());
            let response = match sent {
                Err(_) => {
                    count(&destination, "timeout");
                    return Err(HttpError::ConnectionReadTimeout);
                }
                Ok(Err(e)) => {
                    count(&destination, if e.is_connect() { "connect_error" } else { "error" });
                    let error = classify(&e);
                    if matches!(error, HttpError::TlsCertificateError | HttpError::TlsProtocolError) {
                        // The guest sees only the code; the operator needs the why.
                        tracing::warn!(%destination, "outbound TLS failed: {}", source_chain(&e));
                    }
                    return Err(error);
                }
                Ok(Ok(response)) => response,
            };
            count(&destination, &format!("{}xx", response.status().as_u16() / 100));
            let response = response.map(|body| {
                PacedBody { inner: body, between_bytes: limits.between_bytes, pause: None }.boxed_unsync()
            });
            let io_done: Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, io_done))
        })
    }
}

/// The client's errors in wasi:http's words.
fn classify(error: &hyper_util::client::legacy::Error) -> HttpError {
    if error.is_connect() {
        let text = format!("{error:?}");
        // rustls' verdicts, as they surface through the connector.
        if text.contains("InvalidCertificate") || text.contains("certificate") {
            return HttpError::TlsCertificateError;
        }
        if text.contains("AlertReceived")
            || text.contains("PeerIncompatible")
            || text.contains("InvalidMessage")
        {
            return HttpError::TlsProtocolError;
        }
        if text.contains("ConnectionRefused") {
            return HttpError::ConnectionRefused;
        }
        if text.contains("timed out") || text.contains("Timeout") {
            return HttpError::ConnectionTimeout;
        }
        return HttpError::DestinationUnavailable;
    }
    HttpError::InternalError(Some(error.to_string()))
}

/// `error` and its sources, one line.
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The timeouts of one request: the host's, or a guest's shorter ones.
struct Limits {
    first_byte: Duration,
    between_bytes: Duration,
}

impl Limits {
    fn of(config: &OutboundConfig, options: Option<RequestOptions>) -> Self {
        let shorter = |host: Duration, guest: Option<Duration>| guest.map_or(host, |g| g.min(host));
        let options = options.unwrap_or_default();
        // A guest's connect timeout also bounds the head: the pooled
        // connector has the host's.
        let head = shorter(config.first_byte_timeout, options.first_byte_timeout);
        Self {
            first_byte: shorter(head, options.connect_timeout.map(|c| c + head)),
            between_bytes: shorter(config.between_bytes_timeout, options.between_bytes_timeout),
        }
    }
}

/// A response body that fails when the peer pauses longer than
/// `between_bytes` between two frames.
struct PacedBody {
    inner: hyper::body::Incoming,
    between_bytes: Duration,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Body for PacedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.pause = None;
                Poll::Ready(frame.map(|f| f.map_err(HttpError::from)))
            }
            Poll::Pending => {
                let between = self.between_bytes;
                let pause = self.pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(between)));
                match pause.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entry: &str, scheme: &str, host: &str, port: u16) -> bool {
        AllowedHost::parse(entry).unwrap().matches(scheme, host, port)
    }

    #[test]
    fn entries_match_as_in_spin() {
        assert!(allows("https://api.example.com", "https", "api.example.com", 443));
        assert!(!allows("https://api.example.com", "http", "api.example.com", 443));
        assert!(!allows("https://api.example.com", "https", "api.example.com", 8443));
        assert!(allows("http://localhost:3000", "http", "LOCALHOST", 3000));
        assert!(allows("http://*.example.com", "http", "a.b.example.com", 80));
        assert!(!allows("http://*.example.com", "http", "example.com", 80));
        assert!(!allows("http://*.example.com", "http", "evil-example.com", 80));
        assert!(allows("*://example.com:*", "https", "example.com", 1234));
        assert!(allows("http://127.0.0.1:8000..8100", "http", "127.0.0.1", 8050));
        assert!(!allows("http://127.0.0.1:8000..8100", "http", "127.0.0.1", 8101));
        assert!(allows("https://*", "https", "anything.test", 443));
        assert!(allows("insecure:allow-all", "http", "x", 1));
    }

    #[test]
    fn bad_entries_say_why() {
        for (entry, why) in [
            ("api.example.com", "scheme://host"),
            ("ftp://x", "scheme `ftp`"),
            ("https://x/path", "no path"),
            ("*://x", "give a port"),
            ("http://x:99999", "not a port"),
            ("http://a*b.com", "`*` may only"),
            ("http://self", "`self`"),
            ("http://x:9..1", "empty"),
        ] {
            let err = AllowedHost::parse(entry).unwrap_err().to_string();
            assert!(err.contains(why), "{entry}: {err}");
        }
    }
}
