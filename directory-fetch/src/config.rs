//! The `[directory]` section, read the same way by `relay.toml` and the sidecar's config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spore_protocol::directory::{BadAuthorityKey, Trust};

use crate::DirectorySource;

/// Where the signed directory comes from and who must have signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// File holding the directory (as published by the authorities).
    pub path: Option<PathBuf>,
    /// Or an authority's URL, `http://host:port/directory` (used when `path` is not set).
    pub url: Option<String>,
    /// Hex ed25519 public keys of the directory authorities.
    pub authorities: Vec<String>,
    /// Valid authority signatures required.
    pub threshold: usize,
    /// How often the source is re-read.
    pub refresh_secs: u64,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            path: None,
            url: None,
            authorities: Vec::new(),
            threshold: 1,
            refresh_secs: 60,
        }
    }
}

impl DirectoryConfig {
    /// The source this section names: `path`, else `url`, else none.
    pub fn source(&self) -> DirectorySource {
        match (&self.path, &self.url) {
            (Some(p), _) => DirectorySource::File(p.clone()),
            (None, Some(u)) => DirectorySource::Http(u.clone()),
            (None, None) => DirectorySource::None,
        }
    }

    /// Whether a `path` or a `url` is set.
    pub fn has_source(&self) -> bool {
        self.path.is_some() || self.url.is_some()
    }

    /// The authority keys and threshold.
    pub fn trust(&self) -> Result<Trust, BadAuthorityKey> {
        Trust::from_hex(&self.authorities, self.threshold)
    }

    pub fn refresh(&self) -> Duration {
        Duration::from_secs(self.refresh_secs)
    }

    /// Makes a relative `path` relative to `base` (the config file's folder).
    pub fn resolve_path(&mut self, base: &Path) {
        if let Some(p) = &self.path
            && p.is_relative()
        {
            self.path = Some(base.join(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_wins_over_url() {
        let mut c = DirectoryConfig {
            url: Some("http://a.example/directory".into()),
            ..DirectoryConfig::default()
        };
        assert!(matches!(c.source(), DirectorySource::Http(_)));
        c.path = Some("d.bin".into());
        c.resolve_path(Path::new("/etc/spore"));
        assert!(
            matches!(c.source(), DirectorySource::File(p) if p == Path::new("/etc/spore/d.bin"))
        );
        assert!(matches!(
            DirectoryConfig::default().source(),
            DirectorySource::None
        ));
    }
}
