//! `tls:` (the TLS listener), `h2c`, and a group's `tls:` and `protocol` → checked settings.
//! Every file is read and parsed here, so a bad certificate stops start-up (or a reload) with
//! its name rather than a handshake later.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::values::{invalid, listen_address};
use super::{ConfigError, Env};
use crate::tls::{read_certificates, read_private_key, CertStore, CertificateFiles};
use crate::upstreams::{Protocol, UpstreamTls};

/// The TLS listener as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenerTls {
    listen: Option<String>,
    certificates: Vec<RawCertificate>,
    #[serde(default)]
    h2: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: PathBuf,
    key: PathBuf,
}

/// The TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Its address.
    pub listen: SocketAddr,
    /// Certificate pairs; SNI picks among them, the first is the default.
    pub certificates: Vec<CertificateFiles>,
    /// Offer HTTP/2 by ALPN (`h2`, then `http/1.1`).
    pub h2: bool,
}

/// Where the TLS listener listens unless configured.
const TLS_LISTEN: &str = "127.0.0.1:8443";

pub(super) fn resolve_listener(
    raw: Option<RawListenerTls>,
    env: &impl Env,
) -> Result<Option<ListenerTls>, ConfigError> {
    let from_env = env_certificate(env)?;
    let (listen, written, h2) = match raw {
        Some(raw) => (raw.listen, raw.certificates, raw.h2),
        None if from_env.is_some() => (None, Vec::new(), None),
        None => return Ok(None),
    };
    let listen = listen_address(
        env,
        "TOKENGATE_TLS_LISTEN",
        "tls.listen",
        listen,
        TLS_LISTEN,
    )?;
    let source = match from_env {
        Some(_) => "TOKENGATE_TLS_CERT",
        None => "tokengate.tls.certificates",
    };
    // One pair from the environment (a mounted `kubernetes.io/tls` Secret) replaces the list.
    let certificates: Vec<CertificateFiles> = match from_env {
        Some(pair) => vec![pair],
        None => written
            .into_iter()
            .map(|c| CertificateFiles {
                cert: c.cert,
                key: c.key,
            })
            .collect(),
    };
    CertStore::load(certificates.clone()).map_err(|e| invalid(source, e))?;
    Ok(Some(ListenerTls {
        listen,
        certificates,
        h2: h2.unwrap_or(true),
    }))
}

/// `TOKENGATE_TLS_CERT` and `TOKENGATE_TLS_KEY`, which go together.
fn env_certificate(env: &impl Env) -> Result<Option<CertificateFiles>, ConfigError> {
    match (env.var("TOKENGATE_TLS_CERT"), env.var("TOKENGATE_TLS_KEY")) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(CertificateFiles {
            cert: cert.into(),
            key: key.into(),
        })),
        (Some(_), None) => Err(invalid(
            "TOKENGATE_TLS_KEY",
            "TOKENGATE_TLS_CERT needs its key",
        )),
        (None, Some(_)) => Err(invalid(
            "TOKENGATE_TLS_CERT",
            "TOKENGATE_TLS_KEY needs its certificate",
        )),
    }
}

/// A group's `tls:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    #[serde(default)]
    sni: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

/// `protocol: h1 | h2 | h2c`; `h2` needs TLS (ALPN), `h2c` is plaintext.
pub(super) fn resolve_protocol(
    key: &str,
    raw: Option<&str>,
    tls: bool,
) -> Result<Protocol, ConfigError> {
    let key = format!("{key}.protocol");
    match (raw.unwrap_or("h1"), tls) {
        ("h1", _) => Ok(Protocol::H1),
        ("h2", true) => Ok(Protocol::H2),
        ("h2", false) => Err(invalid(&key, "h2 needs `tls:`; plaintext HTTP/2 is h2c")),
        ("h2c", false) => Ok(Protocol::H2c),
        ("h2c", true) => Err(invalid(&key, "h2c is plaintext; with `tls:` write h2")),
        (other, _) => Err(invalid(&key, format!("{other:?} is not h1, h2 or h2c"))),
    }
}

/// A group's TLS; `addresses` give the default SNI, which must be one host name.
pub(super) fn resolve_upstream_tls(
    key: &str,
    raw: RawUpstreamTls,
    addresses: &[String],
) -> Result<UpstreamTls, ConfigError> {
    let key = format!("{key}.tls");
    let sni = match raw.sni {
        Some(sni) if sni.trim().is_empty() => {
            return Err(invalid(&format!("{key}.sni"), "may not be empty"))
        }
        Some(sni) => sni.trim().to_owned(),
        None => default_sni(addresses).ok_or_else(|| {
            invalid(
                &format!("{key}.sni"),
                "the addresses name more than one host: set the name their certificate carries",
            )
        })?,
    };
    let ca = raw
        .ca_file
        .map(|path| {
            read_certificates(&path).map(|certs| certs.iter().map(|c| c.to_vec()).collect())
        })
        .transpose()
        .map_err(|e| invalid(&format!("{key}.ca_file"), e))?;
    let client = match (raw.cert_file, raw.key_file) {
        (None, None) => None,
        (Some(cert), Some(key_file)) => Some(
            client_certificate(&cert, &key_file)
                .map_err(|e| invalid(&format!("{key}.cert_file"), e))?,
        ),
        _ => {
            return Err(invalid(
                &key,
                "cert_file and key_file go together (the client certificate for mTLS)",
            ))
        }
    };
    Ok(UpstreamTls {
        sni,
        ca,
        client,
        insecure_skip_verify: raw.insecure_skip_verify,
    })
}

/// The host every address shares, when they share one.
fn default_sni(addresses: &[String]) -> Option<String> {
    let host = |entry: &String| {
        entry
            .rsplit_once(':')
            .map_or(entry.as_str(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    };
    let first = host(addresses.first()?);
    addresses.iter().all(|a| host(a) == first).then_some(first)
}

/// A client chain and key, checked to load into rustls as Pingora will use them.
fn client_certificate(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let chain = read_certificates(cert)?;
    let private = read_private_key(key)?;
    let der = private.secret_der().to_vec();
    // Pingora rebuilds the key from bare DER bytes and panics if their format cannot be told.
    rustls::pki_types::PrivateKeyDer::try_from(der.clone())
        .map_err(|e| format!("{}: {e}", key.display()))?;
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain.clone(), private)
        .map_err(|e| format!("{} and {} do not match: {e}", cert.display(), key.display()))?;
    Ok((chain.iter().map(|c| c.to_vec()).collect(), der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_match_the_transport() {
        let k = "tokengate.upstreams.g";
        assert_eq!(resolve_protocol(k, None, false).ok(), Some(Protocol::H1));
        assert_eq!(
            resolve_protocol(k, Some("h2"), true).ok(),
            Some(Protocol::H2)
        );
        assert_eq!(
            resolve_protocol(k, Some("h2c"), false).ok(),
            Some(Protocol::H2c)
        );
        for (raw, tls) in [
            ("h2", false),
            ("h2c", true),
            ("h3", false),
            ("HTTP/2", true),
        ] {
            assert!(resolve_protocol(k, Some(raw), tls).is_err(), "{raw} {tls}");
        }
    }

    #[test]
    fn the_default_sni_is_the_one_host_of_the_addresses() {
        let list = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            default_sni(&list(&["images.internal:443"])).as_deref(),
            Some("images.internal")
        );
        assert_eq!(
            default_sni(&list(&["[::1]:8443", "[::1]:9443"])).as_deref(),
            Some("::1")
        );
        assert_eq!(
            default_sni(&list(&["a.internal:443", "b.internal:443"])),
            None
        );
    }
}
