//! A network that runs itself: three directory authority services, relays uploading their
//! descriptors every epoch and fetching the directory by URL, clients fetching it by URL too.
//! Epochs are shortened to 12 s and one authority is stopped for an epoch: traffic keeps
//! flowing across at least three epoch boundaries and nothing acknowledged is lost.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use spore_authority::{AuthorityConfig, ParamsSection, PeerConfig, RunningAuthority};
use spore_client::{DirectorySource, Timeouts, Transport, TransportConfig, Trust};
use spore_protocol::directory::Directory;
use spore_protocol::{MailboxKey, SporeAddress};
use spore_relay::{DirectoryConfig, RolesConfig};
use spore_testkit::TestRelay;

use crate::{fast, init_tracing, transaction, txn_of, wait_until, within};

const EPOCH: u64 = 12;
const AUTHORITIES: usize = 3;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Authorities {
    keys: Vec<SigningKey>,
    addrs: Vec<SocketAddr>,
    running: Vec<Option<RunningAuthority>>,
}

impl Authorities {
    async fn start() -> Self {
        let keys: Vec<SigningKey> = (0..AUTHORITIES)
            .map(|_| SigningKey::from_bytes(&rand::random()))
            .collect();
        let addrs: Vec<SocketAddr> = (0..AUTHORITIES)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap()
            })
            .collect();
        let mut a = Self {
            keys,
            addrs,
            running: Vec::new(),
        };
        for i in 0..AUTHORITIES {
            let r = a.launch(i).await;
            a.running.push(Some(r));
        }
        a
    }

    fn config(&self, i: usize) -> AuthorityConfig {
        AuthorityConfig {
            listen: self.addrs[i],
            key_file: "unused".into(),
            peers: (0..AUTHORITIES)
                .filter(|j| *j != i)
                .map(|j| PeerConfig {
                    key: hex::encode(self.keys[j].verifying_key().to_bytes()),
                    url: format!("http://{}", self.addrs[j]),
                })
                .collect(),
            threshold: 2,
            directory_file: None,
            params: ParamsSection {
                epoch_length_secs: Some(EPOCH),
                ..ParamsSection::default()
            },
        }
    }

    async fn launch(&self, i: usize) -> RunningAuthority {
        spore_authority::start(self.config(i), self.keys[i].clone())
            .await
            .unwrap()
    }

    fn hex_keys(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| hex::encode(k.verifying_key().to_bytes()))
            .collect()
    }

    fn urls(&self, path: &str) -> Vec<String> {
        self.addrs
            .iter()
            .map(|a| format!("http://{a}{path}"))
            .collect()
    }

    fn trust(&self) -> Trust {
        Trust {
            authorities: self
                .keys
                .iter()
                .map(|k| k.verifying_key().to_bytes())
                .collect(),
            threshold: 2,
        }
    }

    /// The document authority 0 serves, if any.
    async fn published(&self) -> Option<Directory> {
        let a = spore_directory_fetch_get(&self.urls("/directory")[0]).await?;
        Directory::from_bytes(&a).ok()
    }
}

async fn spore_directory_fetch_get(url: &str) -> Option<Vec<u8>> {
    spore_relay::DirectorySource::Http(url.to_owned())
        .fetch()
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_of_authority_services_keeps_delivering_across_epochs_with_one_authority_down() {
    init_tracing();
    within(Duration::from_secs(115), "the whole run", run_network()).await;
}

async fn run_network() {
    let started = Instant::now();
    let mut auth = Authorities::start().await;

    // Two edge relays and one mix per layer, all publishing themselves and reading by URL.
    let mut roles = vec![(true, 0u8), (true, 0)];
    roles.extend((1..=3).map(|l| (false, l)));
    let mut relays = Vec::new();
    for (edge, layer) in roles {
        let section = DirectoryConfig {
            urls: auth.urls("/directory"),
            authorities: auth.hex_keys(),
            threshold: 2,
            refresh_secs: 1,
            upload_urls: auth.urls("/descriptor"),
            ..DirectoryConfig::default()
        };
        let source = section.source();
        relays.push(
            TestRelay::start_full(
                move |c| {
                    c.roles = RolesConfig {
                        entry: edge,
                        mix: !edge,
                        mailbox: edge,
                    };
                    c.layer = layer;
                    c.mix.epoch_length_secs = EPOCH;
                    c.mix.grace_secs = 4;
                    c.directory = section;
                },
                source,
                Arc::new(spore_relay::SystemClock),
            )
            .await,
        );
    }

    // The first document listing every relay (they uploaded at start; the authorities vote
    // 0.35 into an epoch, so this takes up to about 1.5 epochs).
    let deadline = Instant::now() + Duration::from_secs(2 * EPOCH + 6);
    let first = loop {
        if let Some(d) = auth.published().await
            && d.relays.len() == relays.len()
        {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "no directory listing every relay was published"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    first
        .verify(&auth.trust().authorities, 2, now_unix())
        .unwrap();
    for r in &relays {
        r.r().refresh_directory().await.unwrap();
    }
    eprintln!(
        "first directory (epoch {}) after {:.1} s",
        first.epoch,
        started.elapsed().as_secs_f64()
    );

    // Two clients fetching the directory from the authorities' URLs.
    let data = tempfile::tempdir().unwrap();
    let client = |name: &str, relay: usize, key: MailboxKey| {
        let mut c = TransportConfig::new(
            data.path().join(name),
            key,
            name,
            relays[relay].r().id(),
            DirectorySource::Mirrors {
                urls: auth.urls("/directory"),
                refresh: Duration::from_secs(1),
            },
            auth.trust(),
        );
        c.timeouts = Timeouts {
            ack_margin: Duration::from_millis(1500),
            max_backoff: Duration::from_secs(2),
            connect: Duration::from_secs(2),
            ..Timeouts::default()
        };
        fast(c, 50.0)
    };
    let bob_key = MailboxKey::generate(&mut rand::rng());
    let bob_address = SporeAddress {
        capability: None,
        mailbox_relays: vec![relays[1].r().id()],
        mailbox_key: bob_key.public().to_bytes(),
    };
    let alice = Transport::start(client(
        "alice.example",
        0,
        MailboxKey::generate(&mut rand::rng()),
    ))
    .await
    .unwrap();
    let bob = Arc::new(
        Transport::start(client("bob.example", 1, bob_key))
            .await
            .unwrap(),
    );

    // Bob takes everything, noting the epoch each transaction arrived in.
    let arrivals: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let receiver = {
        let (bob, arrivals) = (bob.clone(), arrivals.clone());
        tokio::spawn(async move {
            while let Ok(inbound) = bob.incoming().await {
                arrivals
                    .lock()
                    .unwrap()
                    .entry(txn_of(&inbound.request.path))
                    .or_default()
                    .push(now_unix() / EPOCH);
                let _ = bob.ack(inbound.id).await;
            }
        })
    };

    // Send one transaction a second until three epoch boundaries have passed; authority 2
    // goes down for one whole epoch in the middle.
    let first_epoch = now_unix() / EPOCH;
    // Until half-way into the fourth epoch: deliveries in four epochs, three boundaries.
    let send_until = (first_epoch + 3) * EPOCH + EPOCH / 2;
    let mut sent = 0usize;
    let mut stopped_at = None;
    while now_unix() < send_until {
        let epoch = now_unix() / EPOCH;
        if epoch == first_epoch + 1 && stopped_at.is_none() {
            if let Some(a) = auth.running[2].take() {
                a.shutdown().await;
            }
            stopped_at = Some(epoch);
            eprintln!("authority 2 stopped in epoch {epoch}");
        }
        if stopped_at.is_some_and(|s| epoch == s + 1 && auth.running[2].is_none()) {
            auth.running[2] = Some(auth.launch(2).await);
            eprintln!("authority 2 restarted in epoch {epoch}");
        }
        alice
            .send(&bob_address, transaction("alice.example", sent))
            .await
            .unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        wait_until(Duration::from_secs(20), || alice.outbox_len() == 0).await,
        "alice's outbox did not drain: {:?}",
        alice.stats()
    );
    assert!(
        wait_until(Duration::from_secs(10), || arrivals.lock().unwrap().len()
            >= sent)
        .await,
        "acknowledged transactions were lost: {} of {sent} arrived",
        arrivals.lock().unwrap().len()
    );
    receiver.abort();
    let arrivals = arrivals.lock().unwrap().clone();
    for i in 0..sent {
        assert_eq!(
            arrivals.get(&i.to_string()).map(Vec::len),
            Some(1),
            "txn {i}"
        );
    }
    let epochs: BTreeSet<u64> = arrivals.values().flatten().copied().collect();
    assert!(
        epochs.len() >= 4,
        "deliveries in epochs {epochs:?}: they must continue across three boundaries"
    );
    let last = auth.published().await.unwrap();
    assert!(
        last.epoch >= first.epoch + 3,
        "the authorities kept publishing"
    );
    last.verify(&auth.trust().authorities, 2, now_unix())
        .unwrap();
    eprintln!(
        "{sent} transactions delivered exactly once in epochs {epochs:?}; directory epochs {}..={}; {:.1} s",
        first.epoch,
        last.epoch,
        started.elapsed().as_secs_f64()
    );
    alice.shutdown().await;
    bob.shutdown().await;
    for r in relays {
        if let Some(r) = r.relay {
            let _ = r.shutdown().await;
        }
    }
    for a in auth.running.into_iter().flatten() {
        a.shutdown().await;
    }
}
