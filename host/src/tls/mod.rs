//! TLS for every link the host serves or opens: rustls with the ring
//! provider, certificates and keys read from PEM files.
//!
//! - [`server_config`]: the HTTP listener's certificate chain and key
//!   (`--tls-cert` / `--tls-key`, or `[http] tls_cert` / `tls_key`);
//!   [`listener::TlsListener`] serves axum through it.
//! - [`client_config`]: what outbound links trust: the system's roots
//!   plus any CA files the runtime config names (a private CA in front of
//!   an acquirer, a database or Redis).
//!
//! The databases (sqlx) and Kafka (librdkafka, OpenSSL) do their own TLS
//! from their URL and settings; see docs/runtime-config.md.

pub mod listener;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// The one crypto provider every rustls user in the process gets
/// (sqlx, redis and reqwest build their configs from the process
/// default). Idempotent; the first call wins.
pub fn install_provider() {
    // Fails only when a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file at `path`, in order (leaf first for
/// a chain); an error naming the file when it holds none.
pub fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: holds no PEM certificate", path.display());
    Ok(certs)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
/// The error names the file, never its contents.
pub fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("{}: no usable PEM private key ({e})", path.display()))
}

/// The listener's TLS: `cert` (the chain, leaf first) and its `key`,
/// offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = certificates(cert)?;
    let key = private_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| format!("{} does not go with the key given for it", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The roots outbound links trust: the system's (Debian's
/// ca-certificates; `SSL_CERT_FILE` / `SSL_CERT_DIR` when set) and every
/// certificate in `extra_ca_files`.
pub fn root_store(extra_ca_files: &[impl AsRef<Path>]) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!("a system root certificate was not loaded: {error}");
    }
    roots.add_parsable_certificates(native.certs);
    for file in extra_ca_files {
        for cert in certificates(file.as_ref())? {
            roots
                .add(cert)
                .with_context(|| format!("{}: not a usable CA certificate", file.as_ref().display()))?;
        }
    }
    Ok(roots)
}

/// A client TLS config trusting [`root_store`], offering `alpn` protocols.
pub fn client_config(
    extra_ca_files: &[impl AsRef<Path>],
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(root_store(extra_ca_files)?)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
