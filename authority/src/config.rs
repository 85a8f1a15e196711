//! `authority.toml`: where to listen, who the other authorities are, the network parameters.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spore_protocol::directory::NetworkParams;
use thiserror::Error;

/// Why a config could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

/// One of the other authorities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its ed25519 public key, hex (what `spore keygen authority` printed).
    pub key: String,
    /// Its base URL, `http://host:port` (its `/vote/..` and `/signature/..` are fetched).
    pub url: String,
}

/// The network parameters every authority must configure identically (the document they
/// sign includes them); unset fields take the protocol defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParamsSection {
    pub mu: Option<f64>,
    pub lambda_p: Option<f64>,
    pub lambda_l: Option<f64>,
    pub lambda_d: Option<f64>,
    pub lambda_m: Option<f64>,
    pub epoch_length_secs: Option<u64>,
    pub max_delay_ms: Option<u64>,
    pub pull_interval_ms: Option<u64>,
}

impl ParamsSection {
    pub fn params(&self) -> NetworkParams {
        let d = NetworkParams::default();
        NetworkParams {
            mu: self.mu.unwrap_or(d.mu),
            lambda_p: self.lambda_p.unwrap_or(d.lambda_p),
            lambda_l: self.lambda_l.unwrap_or(d.lambda_l),
            lambda_d: self.lambda_d.unwrap_or(d.lambda_d),
            lambda_m: self.lambda_m.unwrap_or(d.lambda_m),
            packet_size: d.packet_size,
            epoch_length_secs: self.epoch_length_secs.unwrap_or(d.epoch_length_secs),
            max_delay_ms: self.max_delay_ms.unwrap_or(d.max_delay_ms),
            pull_interval_ms: self.pull_interval_ms.unwrap_or(d.pull_interval_ms),
        }
    }
}

/// An authority's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    /// Where the HTTP server listens (uploads, votes, signatures, the directory).
    pub listen: SocketAddr,
    /// This authority's secret key (hex, mode 0600; `spore keygen authority`).
    pub key_file: PathBuf,
    /// The other authorities. Empty: a single authority (testing).
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Signatures a document needs before it is published; readers should require the same.
    pub threshold: usize,
    /// If set, each published document is also written here (0600, atomically), e.g. for a
    /// mirror or `spore directory show`; it is read back at start and served until the next.
    #[serde(default)]
    pub directory_file: Option<PathBuf>,
    #[serde(default)]
    pub params: ParamsSection,
}

impl AuthorityConfig {
    /// Reads and checks a config file; relative paths are relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut c: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [Some(&mut c.key_file), c.directory_file.as_mut()]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Threshold reachable, keys hex, parameters valid.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.peers.len() + 1;
        if self.threshold == 0 || self.threshold > n {
            return Err(ConfigError::Invalid(format!(
                "threshold must be between 1 and the number of authorities ({n})"
            )));
        }
        self.peer_keys()?;
        self.params
            .params()
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("params: {e}")))?;
        Ok(())
    }

    /// The peers' public keys, in config order.
    pub fn peer_keys(&self) -> Result<Vec<[u8; 32]>, ConfigError> {
        self.peers
            .iter()
            .map(|p| {
                hex::decode(p.key.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                    .ok_or_else(|| {
                        ConfigError::Invalid(format!("peer key {:?} is not 32 hex bytes", p.key))
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_parses_and_bad_thresholds_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authority.toml");
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:8080\"\nkey_file = \"a.key\"\nthreshold = 2\n\
                 [[peers]]\nkey = \"{}\"\nurl = \"http://b:8080\"\n[params]\nepoch_length_secs = 600\n",
                "ab".repeat(32)
            ),
        )
        .unwrap();
        let c = AuthorityConfig::load(&path).unwrap();
        assert_eq!(c.key_file, dir.path().join("a.key"));
        assert_eq!(c.params.params().epoch_length_secs, 600);
        let mut bad = c.clone();
        bad.threshold = 3;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("threshold")
        );
    }
}
