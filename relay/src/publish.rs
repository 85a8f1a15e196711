//! The relay publishing itself: each epoch it signs a fresh descriptor (its current and next
//! epochs' Sphinx keys) and uploads it to every configured authority (`[directory]
//! upload_urls`), retrying until each accepted it, and again every quarter epoch (an authority
//! that restarted has lost what it held). Alongside, it watches its standing and
//! warns loudly, once per change of state, when:
//!
//! * it is not listed in the directory in force (or has no directory at all),
//! * the directory in force expires within a quarter epoch: authorities publish the next one
//!   half-way through the epoch before it, so by then it is overdue and the network will
//!   stop routing when it expires,
//! * its clock differs from an authority's (the HTTP `Date` of the upload answer) by more than
//!   [`MAX_CLOCK_OFFSET`]: keys are chosen by epoch, so a skewed relay refuses good packets.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::RelayConfig;
use crate::directory::DirectoryView;
use crate::keys::RelayKeys;
use crate::shutdown::Shutdown;

/// Largest clock difference from an authority tolerated without a warning. The HTTP `Date`
/// has one-second resolution and the exchange takes time, so smaller offsets are noise.
pub const MAX_CLOCK_OFFSET: Duration = Duration::from_secs(10);

/// The relay's standing, as the warnings report it (a warning is logged when it changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    NoDirectory,
    NotListed,
    Expiring,
    Listed,
}

/// Where the relay stands in `view` at `now_unix`.
pub fn standing(
    directory: &DirectoryView,
    me: &spore_protocol::RelayId,
    epoch_len: u64,
) -> Standing {
    let Some(view) = directory.current() else {
        return Standing::NoDirectory;
    };
    let now = directory.now_unix();
    if !view.relays.contains_key(me) {
        Standing::NotListed
    } else if view.valid_until.saturating_sub(now) < epoch_len / 4 {
        Standing::Expiring
    } else {
        Standing::Listed
    }
}

fn report(s: Standing, previous: Option<Standing>) {
    match s {
        Standing::NoDirectory => tracing::warn!(
            "NO DIRECTORY: this relay has no valid directory and forwards nothing; check [directory] (path/url/urls, authorities, threshold)"
        ),
        Standing::NotListed => tracing::warn!(
            "NOT LISTED: this relay is not in the directory in force; clients will not route through it (is it uploading to the authorities, is its address reachable?)"
        ),
        Standing::Expiring => tracing::warn!(
            "DIRECTORY EXPIRING: the directory in force expires within a quarter epoch and no newer one has arrived; are the authorities up?"
        ),
        Standing::Listed if previous.is_some() => {
            tracing::info!("listed in a current directory again")
        }
        Standing::Listed => tracing::info!("listed in the directory"),
    }
}

/// Starts the uploader (if upload URLs are configured) and the standing watcher.
pub(crate) fn spawn(
    config: &RelayConfig,
    keys: &RelayKeys,
    local_addr: SocketAddr,
    directory: &Arc<DirectoryView>,
    clock: Arc<dyn Clock>,
    shutdown: &Shutdown,
) {
    let epoch_len = config.mix.epoch_length_secs.max(1);
    let check_every = Duration::from_secs((epoch_len / 10).clamp(1, 5));
    let me = keys.relay_id();
    let dir = directory.clone();
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        // The first look waits for the first refresh cycle to have had a chance.
        let mut last = None;
        loop {
            tokio::select! {
                _ = stop.signalled() => return,
                _ = tokio::time::sleep(check_every) => {}
            }
            let s = standing(&dir, &me, epoch_len);
            if last != Some(s) {
                report(s, last);
                last = Some(s);
            }
        }
    });
    if config.directory.upload_urls.is_empty() {
        return;
    }
    let uploader = Uploader {
        urls: config.directory.upload_urls.clone(),
        config: config.clone(),
        keys: keys.clone(),
        address: config.advertised_address(local_addr),
        clock,
        retry: check_every,
    };
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        tokio::select! {
            _ = stop.signalled() => {}
            () = uploader.run() => {}
        }
    });
}

struct Uploader {
    urls: Vec<String>,
    config: RelayConfig,
    keys: RelayKeys,
    address: String,
    clock: Arc<dyn Clock>,
    retry: Duration,
}

/// What the last answer from one authority was, so each change is logged once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UploadResult {
    Accepted,
    Refused(String),
    Unreachable,
}

impl Uploader {
    async fn run(self) {
        let epoch_len = self.config.mix.epoch_length_secs.max(1);
        let mut last: Vec<Option<UploadResult>> = vec![None; self.urls.len()];
        let mut clock_off = false;
        loop {
            let now = self.clock.now_unix();
            let epoch = now / epoch_len;
            let descriptor =
                match crate::descriptor::build(&self.config, &self.keys, &self.address, now) {
                    Ok(d) => d.to_bytes(),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot sign the descriptor");
                        tokio::time::sleep(self.retry).await;
                        continue;
                    }
                };
            let mut done: HashSet<usize> = HashSet::new();
            // This epoch's descriptor to every authority, until the epoch ends.
            while self.clock.now_unix() / epoch_len == epoch {
                for (i, url) in self.urls.iter().enumerate() {
                    if done.contains(&i) {
                        continue;
                    }
                    let result = match spore_directory_fetch::post(url, &descriptor).await {
                        Ok(a) => {
                            if let Some(date) = a.date_unix {
                                let off = date.abs_diff(self.clock.now_unix());
                                let is_off = off > MAX_CLOCK_OFFSET.as_secs();
                                if is_off != clock_off {
                                    if is_off {
                                        tracing::warn!(authority = %url, offset_secs = off, "CLOCK OFF: this relay's clock differs from the authority's by more than {} s; run NTP", MAX_CLOCK_OFFSET.as_secs());
                                    } else {
                                        tracing::info!(authority = %url, "clock agrees with the authority again");
                                    }
                                    clock_off = is_off;
                                }
                            }
                            match a.status {
                                // 409: the authority holds a newer descriptor of ours already.
                                200 | 409 => UploadResult::Accepted,
                                s => UploadResult::Refused(format!(
                                    "{s}: {}",
                                    String::from_utf8_lossy(&a.body)
                                )),
                            }
                        }
                        Err(_) => UploadResult::Unreachable,
                    };
                    if result == UploadResult::Accepted {
                        done.insert(i);
                    }
                    let prev = last.get_mut(i);
                    if let Some(prev) = prev
                        && prev.as_ref() != Some(&result)
                    {
                        match &result {
                            UploadResult::Accepted => {
                                tracing::info!(authority = %url, "descriptor uploaded")
                            }
                            UploadResult::Refused(why) => {
                                tracing::warn!(authority = %url, %why, "DESCRIPTOR REFUSED by an authority")
                            }
                            UploadResult::Unreachable => {
                                tracing::warn!(authority = %url, "authority unreachable; retrying")
                            }
                        }
                        *prev = Some(result);
                    }
                }
                if done.len() == self.urls.len() {
                    // Again a quarter epoch later (or at the next epoch): an authority that
                    // restarted meanwhile has lost what it held and gets it back before it votes.
                    let now = self.clock.now_unix();
                    let next_epoch = (now / epoch_len + 1) * epoch_len;
                    let again = (epoch_len / 4).max(1).min(next_epoch.saturating_sub(now));
                    tokio::time::sleep(Duration::from_secs(again).max(self.retry)).await;
                    done.clear();
                    continue;
                }
                tokio::time::sleep(self.retry).await;
            }
            // A new epoch: upload a little after it starts (spread so relays are not in step).
            let spread = (epoch_len / 20).max(1);
            tokio::time::sleep(Duration::from_secs(rand::random_range(0..spread))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::directory::{DirectorySource, MemoryDirectory, Trust};
    use ed25519_dalek::SigningKey;
    use spore_protocol::directory::{DescriptorFields, Directory, NetworkParams, Roles, SphinxKey};

    #[tokio::test]
    async fn standing_follows_the_directory_in_force() {
        let relay = SigningKey::from_bytes(&[7; 32]);
        let me = spore_protocol::RelayId(relay.verifying_key().to_bytes());
        let now = SystemClock.now_unix();
        let mine = spore_protocol::directory::RelayDescriptor::sign(
            DescriptorFields {
                address: "127.0.0.1:4000".into(),
                roles: Roles {
                    entry: true,
                    mix: false,
                    mailbox: true,
                },
                layer: 0,
                link_key: [1; 32],
                sphinx_keys: vec![SphinxKey {
                    epoch: now / 3600,
                    public: [2; 32],
                }],
                published_at: now - 5,
                expires_at: now + 7200,
            },
            &relay,
        )
        .unwrap();
        let doc = |relays, until| Directory {
            epoch: now / 3600,
            valid_after: now - 10,
            valid_until: until,
            params: NetworkParams::default(),
            relays,
            signatures: vec![],
        };
        let m = MemoryDirectory::new();
        let view = DirectoryView::new(
            DirectorySource::Memory(m.clone()),
            Trust::default(),
            Arc::new(SystemClock),
        );
        assert_eq!(standing(&view, &me, 3600), Standing::NoDirectory);
        m.set(doc(vec![], now + 3000).to_bytes());
        view.refresh().await.unwrap();
        assert_eq!(standing(&view, &me, 3600), Standing::NotListed);
        m.set(doc(vec![mine.clone()], now + 3000).to_bytes());
        view.refresh().await.unwrap();
        assert_eq!(standing(&view, &me, 3600), Standing::Listed);
        m.set(doc(vec![mine], now + 3001 + 10).to_bytes());
        view.refresh().await.unwrap();
        assert_eq!(standing(&view, &me, 36_000), Standing::Expiring);
    }
}
