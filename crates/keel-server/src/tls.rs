//! Optional TLS on the client port, with rustls and its `ring` provider.
//!
//! Giving a certificate and a key (`tls_cert_file` and `tls_key_file`, or `--tls-cert` and
//! `--tls-key`) makes the client port speak TLS only: there is no plaintext port beside it, so
//! turning TLS on can never leave an unencrypted way in. Giving a CA as well (`tls_ca_file`,
//! `--tls-ca`) requires every client to present a certificate that CA signed (mutual TLS).
//!
//! Everything is loaded and checked at start-up: a missing, unreadable or malformed file, a key
//! that does not belong to the certificate, or a CA file without a CA certificate stops the
//! server with an error that names the file.
//!
//! A handshake has [`HANDSHAKE_TIMEOUT`] to finish, and holds a client slot while it runs, so
//! half-open handshakes count against `max_clients` and cannot pile up (P11).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing a TLS session waits to send its close_notify.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest PEM file read (a certificate chain or a CA bundle is far smaller).
const PEM_FILE_BYTES_MAX: u64 = 16 << 20;

/// The files TLS is configured from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates that sign client certificates; `Some` requires a client certificate.
    pub ca: Option<PathBuf>,
}

/// A loaded, checked TLS configuration.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    files: TlsFiles,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate {}", self.files.cert.display())?;
        match &self.files.ca {
            Some(ca) => write!(
                f,
                "; client certificates required, signed by a CA in {}",
                ca.display()
            ),
            None => write!(f, "; client certificates not requested"),
        }
    }
}

/// Resolves the TLS settings: `None` when neither certificate nor key is given.
pub fn configure(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> anyhow::Result<Option<Tls>> {
    match (cert, key) {
        (None, None) if ca.is_some() => bail!(
            "tls_ca_file (client certificate verification) needs tls_cert_file and tls_key_file"
        ),
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Tls::load(TlsFiles { cert, key, ca }).map(Some),
        _ => bail!("tls_cert_file and tls_key_file go together: set both, or neither"),
    }
}

impl Tls {
    pub fn load(files: TlsFiles) -> anyhow::Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&files.cert, "TLS certificate file")?;
        let key = read_key(&files.key)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &files.ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca, "TLS CA file")? {
                    roots.add(c).with_context(|| {
                        format!("TLS CA file {}: not a usable CA certificate", ca.display())
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .with_context(|| format!("TLS CA file {}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).with_context(|| {
            format!(
                "TLS key file {} and certificate file {} do not make a usable pair",
                files.key.display(),
                files.cert.display()
            )
        })?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            files,
        })
    }

    /// TLS between cluster nodes: this certificate serves the raft port and identifies this node
    /// when it connects out; peers must present a certificate the CA signed, and their raft
    /// address must match their certificate. Needs the CA.
    pub fn node_tls(&self) -> anyhow::Result<keel_cluster::net::NodeTls> {
        let Some(ca) = &self.files.ca else {
            bail!(
                "a cluster node with TLS needs tls_ca_file (--tls-ca): nodes verify each other's certificates with it"
            );
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in read_certs(ca, "TLS CA file")? {
            roots.add(c).with_context(|| {
                format!("TLS CA file {}: not a usable CA certificate", ca.display())
            })?;
        }
        let certs = read_certs(&self.files.cert, "TLS certificate file")?;
        let key = read_key(&self.files.key)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .context("the node's certificate as a client certificate")?;
        Ok(keel_cluster::net::NodeTls {
            acceptor: self.acceptor.clone(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }

    /// Whether every client must present a certificate signed by the configured CA.
    pub fn verifies_clients(&self) -> bool {
        self.files.ca.is_some()
    }

    /// Runs the server side of the handshake, within [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// Ends a TLS session with close_notify, so the client sees a clean end rather than a
/// truncation; gives up after a short wait on a client that does not read.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
}

fn read_pem(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(PEM_FILE_BYTES_MAX + 1).read_to_end(&mut bytes))
        .with_context(|| format!("{what} {}", path.display()))?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        bail!(
            "{what} {}: larger than {PEM_FILE_BYTES_MAX} bytes",
            path.display()
        );
    }
    Ok(bytes)
}

fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what} {}: bad PEM", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{what} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        );
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let what = "TLS key file";
    let pem = read_pem(path, what)?;
    // Never include the file's contents in an error: it is a private key.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".to_string()
            }
            other => format!("bad PEM ({other})"),
        };
        anyhow::anyhow!("{what} {}: {why}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("keel-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();

        let e = configure(Some(missing.clone()), Some(junk.clone()), None).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("TLS certificate file") && e.contains("missing.pem"),
            "{e}"
        );

        let e = format!(
            "{:#}",
            configure(Some(junk.clone()), Some(junk.clone()), None).unwrap_err()
        );
        assert!(
            e.contains("junk.pem") && e.contains("no PEM certificate"),
            "{e}"
        );

        let e = format!(
            "{:#}",
            configure(Some(junk.clone()), None, None).unwrap_err()
        );
        assert!(e.contains("go together"), "{e}");
        let e = format!(
            "{:#}",
            configure(None, None, Some(junk.clone())).unwrap_err()
        );
        assert!(e.contains("needs tls_cert_file"), "{e}");
        assert!(configure(None, None, None).unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
