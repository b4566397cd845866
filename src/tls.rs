//! TLS material from PEM files: the listener's certificates (chosen by SNI, swapped when their
//! files change, without touching open connections) and what an upstream group's TLS needs
//! (a CA bundle, a client certificate). rustls does the TLS itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::watch::Subscriber;
use pingora_prometheus::prometheus::IntCounterVec;

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Reads every certificate in a PEM file; a file without one is an error.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    // rustls parses lazily; parse here so a broken certificate is refused up front.
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert)
            .map_err(|e| format!("{} holds a malformed certificate: {e}", path.display()))?;
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("{} holds no usable private key: {e}", path.display()))
}

/// A chain and its key, checked to belong together.
fn certified_key(files: &CertificateFiles) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certificates(&files.cert)?;
    let key = read_private_key(&files.key)?;
    let provider = provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "{} and {} do not make a certificate: {e}",
                files.cert.display(),
                files.key.display()
            )
        })
}

/// The process's crypto provider (ring, as Pingora installs it).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The listener's certificates. A client's SNI picks the first one valid for that name (exact
/// or wildcard, as a client would check it); no SNI, or no match, gets the first.
#[derive(Debug)]
pub struct CertStore {
    files: Vec<CertificateFiles>,
    current: RwLock<Arc<[Arc<CertifiedKey>]>>,
}

impl CertStore {
    /// Loads every pair; any unusable file refuses the whole set.
    pub fn load(files: Vec<CertificateFiles>) -> Result<CertStore, String> {
        let keys = Self::read(&files)?;
        Ok(CertStore {
            files,
            current: RwLock::new(keys),
        })
    }

    fn read(files: &[CertificateFiles]) -> Result<Arc<[Arc<CertifiedKey>]>, String> {
        if files.is_empty() {
            return Err("needs at least one certificate".to_owned());
        }
        files.iter().map(certified_key).collect()
    }

    /// Reads the files again and swaps them in; on an error the current set stays.
    pub fn reload(&self) -> Result<usize, String> {
        let keys = Self::read(&self.files)?;
        let count = keys.len();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = keys;
        Ok(count)
    }

    /// The files the set is read from, to watch.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files
            .iter()
            .flat_map(|f| [f.cert.as_path(), f.key.as_path()])
    }

    /// The certificate for a client that asked for `sni`.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let keys = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let matching = sni
            .and_then(|name| ServerName::try_from(name).ok())
            .and_then(|name| keys.iter().find(|key| serves(key, &name)));
        matching.or_else(|| keys.first()).cloned()
    }
}

/// Whether `key`'s leaf certificate is valid for `name`.
fn serves(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    key.end_entity_cert()
        .ok()
        .and_then(|der| ParsedCertificate::try_from(der).ok())
        .is_some_and(|cert| rustls::client::verify_server_name(&cert, name).is_ok())
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name())
    }
}

/// Reads the listener's certificate files again when they change: the next handshake gets the
/// new certificate, connections already open keep theirs.
pub struct CertReloader {
    /// The certificates served.
    pub store: Arc<CertStore>,
}

#[async_trait::async_trait]
impl Subscriber for CertReloader {
    fn name(&self) -> &'static str {
        "TLS certificates"
    }

    fn reloads(&self) -> &'static IntCounterVec {
        &crate::metrics::get().certificate_reloads
    }

    fn files(&self) -> Vec<PathBuf> {
        self.store.files().map(Path::to_path_buf).collect()
    }

    /// Certificates follow their files only (cert-manager rewrites them).
    fn follows_hangup(&self) -> bool {
        false
    }

    async fn reload(&self) -> Result<String, String> {
        let count = self.store.reload()?;
        Ok(format!("{count} certificates"))
    }
}
