//! A throwaway certificate authority for the TLS tests, and a TLS
//! terminator to put in front of a plain-TCP service (the Kafka broker).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A CA made for one test, and one server certificate it signed for
/// `localhost` and `127.0.0.1`; all as PEM files in a directory of its own.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA's certificate: what clients are told to trust.
    pub ca: PathBuf,
    /// The server's certificate chain (leaf, then the CA).
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory others may enter: PostgreSQL and MariaDB, started as
        // their own users, read the server files from here.
        set_mode(dir.path(), 0o755);
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.distinguished_name.push(DnType::CommonName, "payfn test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");

        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("server certificate");

        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write PEM");
            set_mode(&path, 0o644);
            path
        };
        let ca = write("ca.pem", &ca_cert.pem());
        let cert = write("server.pem", &format!("{}{}", cert.pem(), ca_cert.pem()));
        let key = write("server.key", &key.serialize_pem());
        Pki { dir, ca, cert, key }
    }

    /// Another CA, unrelated to this one: what a client trusting the wrong
    /// authority holds.
    pub fn stranger() -> Pki {
        Pki::new()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client that trusts this CA only.
    pub fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca).expect("CA")).expect("CA PEM");
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .expect("TLS client")
    }

    /// The server side of TLS with this certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&self.cert).expect("chain").map(|c| c.expect("cert")).collect();
        let key = PrivateKeyDer::from_pem_file(&self.key).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server config"),
        )
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Terminates TLS on a port of its own and forwards the plain bytes to
/// `127.0.0.1:target`: a TLS listener for a service that has none. Counts
/// the handshakes it completed.
pub struct TlsTerminator {
    pub port: u16,
    pub handshakes: Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsTerminator {
    pub async fn start(target: u16, config: Arc<rustls::ServerConfig>) -> TlsTerminator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("terminator port");
        let port = listener.local_addr().expect("addr").port();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else { return };
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsTerminator { port, handshakes }
    }
}
