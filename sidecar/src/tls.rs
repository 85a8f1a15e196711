//! The sidecar's local certificate authority.
//!
//! A homeserver behind the sidecar sends federation through it as an HTTP CONNECT tunnel with
//! TLS to the destination inside. To read the signed request, the sidecar ends that TLS itself,
//! with a certificate for the requested server name issued on the fly by a CA it generated at
//! init. Only the local homeserver trusts that CA (Synapse: `federation_custom_ca_list`), so
//! the CA's key never has to leave the sidecar's data dir, and nothing on the network sees a
//! certificate: the request itself travels through Spore and is authenticated end to end by
//! its X-Matrix signature.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// File names inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

/// Server names the CA issues for at most (a hostile local client cannot grow the cache
/// without bound; federation talks to far fewer servers than this at once).
const MAX_CACHED_CERTS: usize = 4096;
/// Longest server name (DNS limit) a certificate is issued for.
const MAX_SERVER_NAME_LEN: usize = 253;

/// Errors of the local CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The homeserver asked for a name no certificate can be issued for.
    #[error("not a server name: {0:?}")]
    BadServerName(String),
}

/// The sidecar's CA: loads (or creates, at first start) `ca.pem` + `ca.key` in a directory and
/// issues a leaf certificate per server name, cached in memory.
pub struct LocalCa {
    cert_pem: String,
    cert_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    configs: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Loads the CA from `dir`, generating and writing it (key mode 0600) if absent.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, TlsError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::File { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !(cert_path.exists() && key_path.exists()) {
            let key = KeyPair::generate()?;
            let params = ca_params()?;
            let cert = params.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            tracing::info!(path = %cert_path.display(), "generated the sidecar's local CA");
        }
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        // The issuer is the CA's (deterministic) name and its key: what a leaf's issuer name and
        // authority key identifier must match.
        let issuer = Issuer::new(ca_params()?, key);
        Ok(LocalCa {
            cert_pem,
            cert_path,
            issuer,
            configs: Mutex::new(HashMap::new()),
        })
    }

    /// Where the CA certificate is (what the homeserver must trust).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server config presenting a certificate for `server_name` (issued once, cached).
    pub fn server_config(&self, server_name: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let name = server_name.to_ascii_lowercase();
        if name.is_empty()
            || name.len() > MAX_SERVER_NAME_LEN
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return Err(TlsError::BadServerName(server_name.to_owned()));
        }
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = configs.get(&name) {
            return Ok(c.clone());
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.clone()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.clone());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = vec![
            cert.der().clone(),
            CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
                .map_err(|_| TlsError::BadServerName("CA certificate".into()))?,
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if configs.len() >= MAX_CACHED_CERTS {
            configs.clear();
        }
        configs.insert(name, config.clone());
        Ok(config)
    }
}

use rustls::pki_types::pem::PemObject;

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Spore sidecar local CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalCa::load_or_create(dir.path()).unwrap();
        let b = LocalCa::load_or_create(dir.path()).unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        assert!(a.server_config("hs-b.spore.test").is_ok());
        assert!(a.server_config("bad name/../").is_err());
    }
}
