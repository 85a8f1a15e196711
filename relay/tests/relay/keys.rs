//! Forward secrecy of Sphinx keys, and what the relay's files let a reader see.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hkdf::Hkdf;
use sha2::Sha256;
use spore_protocol::MailboxKey;
use spore_protocol::packet::{IncomingPacket, PacketLimits, RouteHop};
use spore_relay::{DirectorySource, ManualClock, Relay, RelayConfig, RelayKeys};
use x25519_dalek::StaticSecret;

use spore_testkit::*;

const WAIT: Duration = Duration::from_secs(10);

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Every 32-byte value a key could hide as in `bytes`: the whole file if it is 32 bytes, each
/// 64-digit hex string in it, and (small files) every 32-byte window at 8-byte steps.
fn key_candidates(bytes: &[u8]) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    if let Ok(k) = <[u8; 32]>::try_from(bytes) {
        out.push(k);
    }
    let text = String::from_utf8_lossy(bytes);
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() == 64
            && let Ok(k) = hex::decode(&run)
            && let Ok(k) = <[u8; 32]>::try_from(k.as_slice())
        {
            out.push(k);
        }
        run.clear();
    }
    if bytes.len() <= 4096 {
        for start in (0..bytes.len().saturating_sub(31)).step_by(8) {
            out.push(bytes[start..start + 32].try_into().unwrap());
        }
    }
    out
}

/// How earlier versions derived an epoch's key from a master secret kept in the key file.
fn legacy_derivation(master: &[u8; 32], epoch: u64) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"spore/relay/sphinx-epoch-key/v1"), master);
    let mut okm = [0u8; 32];
    hk.expand(&epoch.to_be_bytes(), &mut okm).unwrap();
    okm
}

/// Files under `dir` holding a key that unwraps `packet` (recorded for `epoch`), taken as the
/// key itself or as a master secret to derive it from; and how many candidates were tried.
fn files_that_unwrap(dir: &Path, packet: &[u8], epoch: u64) -> (Vec<PathBuf>, usize) {
    let limits = PacketLimits::default();
    let mut found = Vec::new();
    let mut tried = 0;
    for path in files_under(dir) {
        let bytes = std::fs::read(&path).unwrap();
        for candidate in key_candidates(&bytes) {
            for secret in [candidate, legacy_derivation(&candidate, epoch)] {
                tried += 1;
                let unwraps = IncomingPacket::parse(packet, &limits)
                    .and_then(|p| p.prepare(&StaticSecret::from(secret)))
                    .and_then(|p| p.unwrap(&limits))
                    .is_ok();
                if unwraps && !found.contains(&path) {
                    found.push(path.clone());
                }
            }
        }
    }
    (found, tried)
}

#[tokio::test]
async fn nothing_on_disk_unwraps_a_recorded_packet_after_its_grace_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::for_test(dir.path());
    config.mix.epoch_length_secs = 600;
    config.mix.grace_secs = 60;
    config.directory.refresh_secs = 1;
    let keys = RelayKeys::load_or_generate(&config.key_file).unwrap();
    let clock = ManualClock::starting_now();
    let relay = Relay::start_with_clock(
        config.clone(),
        keys.clone(),
        DirectorySource::None,
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let epoch = relay.current_epoch();
    let hop = RouteHop {
        id: relay.id(),
        sphinx_key: relay.sphinx_public(epoch),
    };
    let owner = MailboxKey::generate(&mut rand::rng());
    // The neighbour records this packet on its way in.
    let recorded = plain_packet(&[hop], owner.mailbox_id(), &[Duration::ZERO], b"secret");
    let t = TestRelayRef(&relay, &keys);
    t.send(&recorded).await;
    assert!(wait_until(WAIT, || relay.metrics().packets_stored == 1).await);
    let replay_log = config.data_dir.join("replay").join(format!("{epoch}.log"));
    assert!(replay_log.exists());

    // Control: while the epoch is current, the search finds the key (it would find it later).
    let (found, tried_before) = files_that_unwrap(dir.path(), &recorded, epoch);
    assert_eq!(
        found.len(),
        1,
        "exactly one file holds the live key: {found:?}"
    );
    assert!(found[0].starts_with(dir.path().join("relay.key.epochs")));

    // Past the end of the epoch and its grace window: the next maintenance tick erases.
    clock.advance(Duration::from_secs(600 + 60 + 1));
    assert!(
        wait_until(WAIT, || !replay_log.exists() && !found[0].exists()).await,
        "the epoch's key file and replay log are erased"
    );
    assert!(
        relay.keys().epochs().held().iter().all(|e| *e > epoch),
        "no key of the epoch in memory"
    );
    let (found, tried_after) = files_that_unwrap(dir.path(), &recorded, epoch);
    assert!(found.is_empty(), "these files unwrap the packet: {found:?}");
    eprintln!(
        "forward secrecy: {tried_before} candidate keys tried before erasure (1 file unwraps), \
         {tried_after} after (none unwraps)"
    );

    // Every file the relay made is 0600 and every folder 0700.
    use std::os::unix::fs::PermissionsExt;
    for path in files_under(dir.path()) {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
        let mut d = path.parent().unwrap();
        while d != dir.path() {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
            d = d.parent().unwrap();
        }
    }
    relay.shutdown().await.unwrap();
}

/// Sends on a link to a relay started outside [`TestRelay`].
struct TestRelayRef<'a>(&'a spore_relay::RunningRelay, &'a RelayKeys);

impl TestRelayRef<'_> {
    async fn send(&self, packet: &[u8]) {
        use spore_protocol::link::Frame;
        use spore_protocol::params::PACKET_SIZE;
        let mut link = spore_relay::Link::connect(
            &self.0.local_addr().to_string(),
            &rand::random(),
            Some(self.1.link_public()),
        )
        .await
        .unwrap();
        let p: Box<[u8; PACKET_SIZE]> = packet.to_vec().into_boxed_slice().try_into().unwrap();
        link.send(&Frame::Packet(p)).await.unwrap();
        // Close cleanly so the relay sees the frame.
        link.writer.shutdown().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), link.reader.read_frame()).await;
    }
}
