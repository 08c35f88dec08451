//! TLS server configuration from PEM files and the surface's TLS options,
//! built once at start and again on each SIGHUP (certificate renewals).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::settings::{TlsOptions, TlsVersion};

/// The files a surface's certificate comes from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub crt: PathBuf,
    pub key: PathBuf,
    /// Intermediate certificates served after the certificate (`ssl_chain`).
    pub chain: Option<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The rustls configuration serving `files` with `opts`; HTTP/2 and
/// HTTP/1.1 offered by ALPN. Fails, saying why, on any unreadable file, a
/// key that does not match the certificate, or an unknown cipher suite.
pub fn server_config(files: &TlsFiles, opts: &TlsOptions) -> Result<Arc<ServerConfig>, String> {
    let mut certs = certificates(&read(&files.crt)?, &files.crt)?;
    if let Some(chain) = &files.chain {
        certs.extend(certificates(&read(chain)?, chain)?);
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?;

    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = &opts.cipher_suites {
        provider.cipher_suites = cipher_suites(&provider, names)?;
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match opts.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS options: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The provider's suites named in `names`, in the order given.
fn cipher_suites(
    provider: &CryptoProvider,
    names: &[String],
) -> Result<Vec<rustls::SupportedCipherSuite>, String> {
    let name_of = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite());
    names
        .iter()
        .map(|name| {
            provider
                .cipher_suites
                .iter()
                .find(|s| name_of(s).eq_ignore_ascii_case(name))
                .copied()
                .ok_or_else(|| {
                    let known: Vec<String> = provider.cipher_suites.iter().map(name_of).collect();
                    format!(
                        "tls_cipher_suites: unknown suite {name} (known: {})",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_suite_names_the_known_ones() {
        let provider = rustls::crypto::ring::default_provider();
        let err = cipher_suites(&provider, &["TLS_RSA_WITH_RC4_128_MD5".into()]).unwrap_err();
        assert!(err.contains("TLS13_AES_256_GCM_SHA384"), "{err}");
        let ok = cipher_suites(&provider, &["tls13_aes_128_gcm_sha256".into()]).unwrap();
        assert_eq!(ok.len(), 1);
    }
}
