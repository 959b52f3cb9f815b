//! Encrypted node traffic: mutual TLS (rustls) between `rlrig run` and its `rlrig node`s.
//!
//! Every process of a cluster has a certificate signed by the cluster's CA. A node accepts a
//! connection only from a peer whose certificate that CA signed; a coordinator accepts a node
//! only if its certificate is signed by the CA and names the host of the node's address. The
//! shared secret is still checked inside the encrypted session.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::rustls;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The PEM files of one process: its certificate chain, its key, the cluster's CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// This process's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
    /// The CA certificate(s) whose signature a peer's certificate must carry.
    pub ca: PathBuf,
}

/// Why TLS could not be set up from a process's files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        /// `certificate`, `key` or `CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no PEM item of the kind needed, or a malformed one.
    #[error("the TLS {what} {} {problem}", path.display())]
    Pem {
        /// `certificate`, `key` or `CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the files together (a key that does not match its certificate, a CA
    /// that is not a CA certificate, ...).
    #[error("TLS set-up failed: {0}")]
    Config(String),
}

/// TLS for both directions of one process: accepting peers (as a node, or as a coordinator's
/// own endpoint) and connecting to nodes.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls { .. }")
    }
}

impl Tls {
    /// Reads the PEM files and builds mutual-TLS configurations (TLS 1.2 and 1.3, aws-lc-rs).
    pub fn load(paths: &TlsPaths) -> Result<Tls, TlsError> {
        let certs = read_certs(&paths.cert, "certificate")?;
        let key = read_key(&paths.key)?;
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&paths.ca, "CA")? {
            roots.add(ca).map_err(|e| TlsError::Pem {
                what: "CA",
                path: paths.ca.clone(),
                problem: format!("holds a certificate rustls cannot use as a root: {e}"),
            })?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = |e: rustls::Error| TlsError::Config(e.to_string());

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(config)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(config)?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    pub(crate) fn connector(&self) -> TlsConnector {
        self.connector.clone()
    }
}

/// The name a node's certificate must carry: the host of its `host:port` address (a DNS name
/// or an IP address).
pub(crate) fn server_name(address: &str) -> Result<ServerName<'static>, String> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is neither a DNS name nor an IP address"))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            problem: format!("is not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            problem: "holds no `BEGIN CERTIFICATE` block".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: "key",
        path: path.to_path_buf(),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (PKCS#8, PKCS#1 or SEC1 PEM)".into()
            }
            e => format!("is not a valid PEM private key: {e}"),
        },
    })
}
