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
    /// Or several authority or mirror URLs, tried in turn (after `url`, if both are set).
    pub urls: Vec<String>,
    /// Where the last verified document is kept (mode 0600, replaced atomically) and read
    /// back at start, so a restart does not depend on an authority being up. Relays default
    /// to `directory.bin` in their data dir.
    pub cache_path: Option<PathBuf>,
    /// Relays only: the authorities' descriptor upload URLs (`http://host:port/descriptor`);
    /// a running relay uploads its descriptor to each of them every epoch.
    pub upload_urls: Vec<String>,
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
            urls: Vec::new(),
            cache_path: None,
            upload_urls: Vec::new(),
            authorities: Vec::new(),
            threshold: 1,
            refresh_secs: 60,
        }
    }
}

impl DirectoryConfig {
    /// The source this section names: `path`, else the URLs (`url` then `urls`), else none.
    pub fn source(&self) -> DirectorySource {
        if let Some(p) = &self.path {
            return DirectorySource::File(p.clone());
        }
        let mut urls: Vec<String> = self.url.iter().chain(&self.urls).cloned().collect();
        match urls.len() {
            0 => DirectorySource::None,
            1 => DirectorySource::Http(urls.remove(0)),
            _ => DirectorySource::Mirrors(urls),
        }
    }

    /// Whether a `path` or a URL is set.
    pub fn has_source(&self) -> bool {
        self.path.is_some() || self.url.is_some() || !self.urls.is_empty()
    }

    /// The authority keys and threshold.
    pub fn trust(&self) -> Result<Trust, BadAuthorityKey> {
        Trust::from_hex(&self.authorities, self.threshold)
    }

    pub fn refresh(&self) -> Duration {
        Duration::from_secs(self.refresh_secs)
    }

    /// Makes a relative `path` and `cache_path` relative to `base` (the config file's folder).
    pub fn resolve_path(&mut self, base: &Path) {
        for p in [&mut self.path, &mut self.cache_path].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
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

    #[test]
    fn several_urls_are_mirrors_tried_in_turn() {
        let c: DirectoryConfig = toml::from_str(
            "url = \"http://a:1/directory\"\nurls = [\"http://b:1/directory\"]\ncache_path = \"c.bin\"",
        )
        .unwrap();
        assert!(matches!(c.source(), DirectorySource::Mirrors(u) if u.len() == 2));
        let one: DirectoryConfig = toml::from_str("urls = [\"http://b:1/directory\"]").unwrap();
        assert!(matches!(one.source(), DirectorySource::Http(_)));
        assert!(one.has_source());
        let mut c = c;
        c.resolve_path(Path::new("/etc/spore"));
        assert_eq!(c.cache_path.as_deref(), Some(Path::new("/etc/spore/c.bin")));
    }
}
