//! Crash durability with the real binaries: SIGKILL at random moments, restart, and check that
//! nothing acknowledged is lost and nothing deleted comes back.
//!
//! * `spore-relay` (mailbox role): a client streams SURB-acked packets in while an owner pulls
//!   and deletes; the relay is SIGKILLed and restarted `SPORE_CRASH_CYCLES` times (50 in CI,
//!   500 with `SPORE_SOAK=1`). Every packet whose ack came back must be pulled by its owner, and
//!   no item whose `DeleteDone` came back may ever be pulled again.
//! * `spore-sidecar` (the client's outbox): a homeserver PUTs transactions while the sending
//!   sidecar is SIGKILLed and restarted; every request answered 200 is delivered to the
//!   recipient's homeserver exactly once.
//!
//! Both run the workspace binaries, which `spore_testkit::binaries` builds when they are missing
//! or stale.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngExt;
use spore_protocol::packet::{self, RouteHop};
use spore_protocol::{MailboxKey, SporeAddress};
use spore_relay::{Link, RelayKeys};
use spore_testkit::relay_process::{self, KilledOnDrop, connect, free_port, hop};
use spore_testkit::{acked_packet_with_ids, binaries, packet_frame, try_delete, try_pull};

use crate::{init_tracing, wait_until};

/// How many kill cycles: `SPORE_CRASH_CYCLES`, else 500 with `SPORE_SOAK=1`, else `ci`.
pub fn cycles(ci: usize) -> usize {
    if let Some(n) = std::env::var("SPORE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if std::env::var("SPORE_SOAK").is_ok_and(|v| v == "1") {
        ci * 10
    } else {
        ci
    }
}

fn seq_of(surb_id: &[u8; 16]) -> u64 {
    u64::from_be_bytes(surb_id[..8].try_into().unwrap())
}

/// What the owner and the sender have seen, across every cycle.
#[derive(Default)]
struct Ledger {
    /// ack SURB id -> packet sequence number.
    ack_ids: HashMap<[u8; 16], u64>,
    sent: u64,
    acked: HashSet<u64>,
    received: HashSet<u64>,
    /// Items whose deletion the relay confirmed: must never be pulled again.
    deleted: HashSet<u64>,
    /// Items pulled again after a confirmed deletion (a durability bug if non-empty).
    resurrected: Vec<u64>,
}

/// Lets the owner loops drain: returns once every acked packet has been received, or once
/// nothing new was acked or received for 3 s (at most 120 s). A fixed wait judged a slow
/// drain as a loss: each pull and each delete is answered no sooner than 15 ms after it
/// (the relay's answer floor), so one owner loop takes about 30 items/s per 16-slot pull.
async fn settle(ledger: &Mutex<Ledger>) {
    let counts = || {
        let l = ledger.lock().unwrap();
        (
            l.acked.len(),
            l.received.len(),
            l.acked.is_subset(&l.received),
        )
    };
    let start = Instant::now();
    let (mut last, mut since) = (counts(), Instant::now());
    while start.elapsed() < Duration::from_secs(120) && since.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = counts();
        if now.2 && since.elapsed() >= Duration::from_secs(1) {
            return;
        }
        if (now.0, now.1) != (last.0, last.1) {
            (last, since) = (now, Instant::now());
        }
    }
}

/// The owner's side: pull, record, delete; stops when the link dies.
async fn owner_loop(mut link: Link, ledger: Arc<Mutex<Ledger>>, acks: bool) {
    loop {
        let Ok(items) = try_pull(&mut link).await else {
            return;
        };
        if items.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let mut seqs = Vec::new();
        {
            let mut l = ledger.lock().unwrap();
            for item in &items {
                if acks {
                    if let Some(&seq) = l.ack_ids.get(&item.surb_id) {
                        l.acked.insert(seq);
                    }
                } else {
                    let seq = seq_of(&item.surb_id);
                    if l.deleted.contains(&seq) {
                        l.resurrected.push(seq);
                    }
                    l.received.insert(seq);
                    seqs.push(seq);
                }
            }
        }
        let n = items.len();
        match try_delete(&mut link, items.iter().map(|i| i.handle).collect()).await {
            Ok(count) => {
                assert_eq!(count as usize, n, "every pulled handle is deletable");
                ledger.lock().unwrap().deleted.extend(seqs);
            }
            Err(_) => return,
        }
    }
}

/// The sender's side: one acked packet after another until the link dies.
async fn sender_loop(
    mut link: Link,
    h: RouteHop,
    recipient: spore_protocol::MailboxId,
    sender: spore_protocol::MailboxId,
    ledger: Arc<Mutex<Ledger>>,
) {
    loop {
        let seq = {
            let mut l = ledger.lock().unwrap();
            l.sent += 1;
            l.sent
        };
        let ack_id = packet::random_surb_id(&mut rand::rng());
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&seq.to_be_bytes());
        id[8..].copy_from_slice(&packet::random_surb_id(&mut rand::rng())[8..]);
        let p = acked_packet_with_ids(&[h], recipient, id, &[h], sender, ack_id);
        ledger.lock().unwrap().ack_ids.insert(ack_id, seq);
        if link.writer.write_frame(&packet_frame(&p)).await.is_err()
            || link.writer.flush().await.is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_relay_sigkilled_at_random_keeps_every_acked_packet_and_deletes_stick() {
    init_tracing();
    let bin = binaries::require(binaries::RELAY);
    let dir = tempfile::tempdir().unwrap();
    let addr = relay_process::init(&bin, dir.path());
    let keys = RelayKeys::load(&dir.path().join("relay.key")).unwrap();
    let (recipient, sender) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let n_cycles = cycles(50);
    let started = Instant::now();
    let mut rng = rand::rng();

    for cycle in 0..n_cycles {
        let child = relay_process::run(&bin, dir.path());
        let h = hop(&keys);
        let in_link = connect(&addr, &keys, &rand::random()).await;
        let ack_link = connect(&addr, &keys, &sender.secret_bytes()).await;
        let owner_link = connect(&addr, &keys, &recipient.secret_bytes()).await;
        let tasks = [
            tokio::spawn(sender_loop(
                in_link,
                h,
                recipient.mailbox_id(),
                sender.mailbox_id(),
                ledger.clone(),
            )),
            tokio::spawn(owner_loop(ack_link, ledger.clone(), true)),
            tokio::spawn(owner_loop(owner_link, ledger.clone(), false)),
        ];
        // Kill at a random moment: mid-write, mid-commit, mid-pull or mid-delete.
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..250))).await;
        child.sigkill();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let l = ledger.lock().unwrap();
        assert!(
            l.resurrected.is_empty(),
            "cycle {cycle}: deleted items came back: {:?}",
            l.resurrected
        );
    }

    // Final run: collect every ack still stored and everything still in the mailbox.
    let _child = relay_process::run(&bin, dir.path());
    let ack_link = connect(&addr, &keys, &sender.secret_bytes()).await;
    let owner_link = connect(&addr, &keys, &recipient.secret_bytes()).await;
    let a = tokio::spawn(owner_loop(ack_link, ledger.clone(), true));
    let o = tokio::spawn(owner_loop(owner_link, ledger.clone(), false));
    settle(&ledger).await;
    a.abort();
    o.abort();

    let l = ledger.lock().unwrap();
    let lost: Vec<_> = l.acked.difference(&l.received).copied().collect();
    let report = format!(
        "relay crash loop: {n_cycles} SIGKILL cycles in {:.1}s, {} packets sent, {} acked, \
         {} received by the owner, {} acked-but-lost, {} resurrected after delete",
        started.elapsed().as_secs_f64(),
        l.sent,
        l.acked.len(),
        l.received.len(),
        lost.len(),
        l.resurrected.len(),
    );
    eprintln!("{report}");
    assert!(lost.is_empty(), "{report}: lost {lost:?}");
    assert!(l.resurrected.is_empty(), "{report}");
    assert!(
        l.acked.len() as u64 >= n_cycles as u64,
        "the loop exercised too little: {report}"
    );
    assert!(l.received.iter().all(|s| *s >= 1 && *s <= l.sent));
}

// ---------------------------------------------------------------- sidecar outbox

fn sidecar_run(bin: &Path, config: &Path) -> KilledOnDrop {
    KilledOnDrop(
        Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// PUT one transaction to the sidecar; true when it answered 200 (durably queued).
async fn put_txn(addr: &str, txn: usize) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body =
        format!(r#"{{"origin":"alice.example","origin_server_ts":{txn},"pdus":[],"edus":[]}}"#);
    let req = format!(
        "PUT /_matrix/federation/v1/send/txn-{txn} HTTP/1.1\r\nHost: bob.example\r\n\
         Authorization: X-Matrix origin=\"alice.example\",destination=\"bob.example\",key=\"ed25519:a\",sig=\"c2ln\"\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(out.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), attempt).await,
        Ok(Some(true))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_sigkilled_mid_send_delivers_every_answered_request_exactly_once() {
    use spore_sidecar::{Sidecar, SidecarConfig};
    use spore_testkit::{SidecarNode, StubHomeserver, Testnet, TestnetConfig};
    init_tracing();
    let bin = binaries::require(binaries::SIDECAR);
    let net = Testnet::start(TestnetConfig::default()).await.unwrap();
    let mailboxes = net.mailbox_relays();
    let data = tempfile::tempdir().unwrap();
    let (alice_key, bob_key) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    let alice_address = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[0]],
        mailbox_key: alice_key.public().to_bytes(),
    };
    let bob_address = SporeAddress {
        capability: None,
        mailbox_relays: vec![mailboxes[1]],
        mailbox_key: bob_key.public().to_bytes(),
    };
    let alice_hs = StubHomeserver::start().await.unwrap();
    let bob_hs = StubHomeserver::start().await.unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let (alice_url, bob_url) = (alice_hs.url(), bob_hs.url());
    let alice_config = net
        .write_sidecar_config(
            &data.path().join("alice"),
            &SidecarNode {
                listen: &listen,
                peers: &[("bob.example", &bob_address)],
                ..SidecarNode::new("alice.example", mailboxes[0], &alice_key, &alice_url)
            },
        )
        .unwrap();
    let bob_config = net
        .write_sidecar_config(
            &data.path().join("bob"),
            &SidecarNode {
                peers: &[("alice.example", &alice_address)],
                ..SidecarNode::new("bob.example", mailboxes[1], &bob_key, &bob_url)
            },
        )
        .unwrap();
    let bob = Sidecar::start(SidecarConfig::load(&bob_config).unwrap())
        .await
        .unwrap();

    let n_cycles = cycles(20);
    let mut rng = rand::rng();
    let mut answered = HashSet::new();
    let mut txn = 0;
    let started = Instant::now();
    for _ in 0..n_cycles {
        let child = sidecar_run(&bin, &alice_config);
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(&listen).is_ok()
        })
        .await;
        assert!(up, "sidecar did not come up");
        let kill_at = Instant::now() + Duration::from_millis(rng.random_range(100..800));
        // Each PUT races the kill: answered ones must arrive, the others may or may not.
        let killer = tokio::spawn(async move {
            tokio::time::sleep_until(kill_at.into()).await;
            child.sigkill();
        });
        while Instant::now() < kill_at + Duration::from_millis(50) {
            txn += 1;
            if put_txn(&listen, txn).await {
                answered.insert(format!("txn-{txn}"));
            } else if Instant::now() >= kill_at {
                break;
            }
            // Paced like a homeserver with a steady stream: the outbox drains at the
            // sender's Poisson rate (100 packets/s here), so an unpaced burst would only
            // measure the queue, not durability.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        killer.await.unwrap();
    }

    // Restart for good: the outbox must drain everything it answered 200 for.
    let _alice = sidecar_run(&bin, &alice_config);
    let delivered = |hs: &StubHomeserver| -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in hs.received() {
            *m.entry(crate::txn_of(&r.path)).or_insert(0) += 1;
        }
        m
    };
    // Wait while deliveries keep coming; a 30 s stall (or 10 minutes) ends the wait, so a
    // slow drain is told apart from a loss.
    let (mut last_count, mut last_progress) = (0, Instant::now());
    let wait_start = Instant::now();
    let all_in = loop {
        let d = delivered(&bob_hs);
        if answered.iter().all(|t| d.contains_key(t)) {
            break true;
        }
        if d.len() > last_count {
            (last_count, last_progress) = (d.len(), Instant::now());
        }
        if last_progress.elapsed() > Duration::from_secs(30)
            || wait_start.elapsed() > Duration::from_secs(600)
        {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let drain_secs = wait_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = delivered(&bob_hs);
    let lost: Vec<_> = answered.iter().filter(|t| !d.contains_key(*t)).collect();
    let dups: Vec<_> = d.iter().filter(|(_, n)| **n > 1).collect();
    let report = format!(
        "sidecar crash loop: {n_cycles} SIGKILL cycles in {:.1}s, {txn} PUTs, {} answered 200, \
         {} delivered (drained {drain_secs:.1}s after the last restart), {} answered-but-lost, \
         {} delivered twice",
        started.elapsed().as_secs_f64() - drain_secs,
        answered.len(),
        d.len(),
        lost.len(),
        dups.len()
    );
    eprintln!("{report}");
    assert!(
        all_in && lost.is_empty(),
        "{report}: lost {:?}",
        lost.iter().take(20).collect::<Vec<_>>()
    );
    assert!(dups.is_empty(), "{report}: {dups:?}");
    assert!(!answered.is_empty(), "{report}");
    assert!(alice_hs.received().is_empty());
    bob.shutdown().await;
    let _ = net.shutdown().await;
}

// ---------------------------------------------------------------- disk full

/// Runs the relay with its file size capped (`ulimit -f`, SIGXFSZ ignored so a write past the
/// cap fails with EFBIG like a full disk instead of killing the process).
fn relay_run_capped(bin: &Path, dir: &Path, cap_kib: u64) -> KilledOnDrop {
    KilledOnDrop(
        Command::new("bash")
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; ulimit -f {cap_kib}; exec \"$0\" \"$@\""
            ))
            .arg(bin)
            .arg("run")
            .arg("--config")
            .arg(dir.join("relay.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_relay_on_a_full_disk_refuses_and_keeps_what_it_acked() {
    let bin = binaries::require(binaries::RELAY);
    let dir = tempfile::tempdir().unwrap();
    let addr = relay_process::init(&bin, dir.path());
    let keys = RelayKeys::load(&dir.path().join("relay.key")).unwrap();
    let (recipient, sender) = (
        MailboxKey::generate(&mut rand::rng()),
        MailboxKey::generate(&mut rand::rng()),
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    let mut child = relay_run_capped(&bin, dir.path(), 6 * 1024);
    let h = hop(&keys);
    let in_link = connect(&addr, &keys, &rand::random()).await;
    let ack_link = connect(&addr, &keys, &sender.secret_bytes()).await;
    let s = tokio::spawn(sender_loop(
        in_link,
        h,
        recipient.mailbox_id(),
        sender.mailbox_id(),
        ledger.clone(),
    ));
    let a = tokio::spawn(owner_loop(ack_link, ledger.clone(), true));
    // Stream until acks stop coming (the store is full) or 60 s pass.
    let (mut last, mut since) = (0, Instant::now());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) && since.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = ledger.lock().unwrap().acked.len();
        if n > last {
            (last, since) = (n, Instant::now());
        }
    }
    let alive = child.0.try_wait().unwrap().is_none();
    s.abort();
    a.abort();
    let (sent, acked) = {
        let l = ledger.lock().unwrap();
        (l.sent, l.acked.len())
    };
    // Still answering pulls with the disk full?
    let answering = if alive {
        let mut l = connect(&addr, &keys, &recipient.secret_bytes()).await;
        tokio::time::timeout(Duration::from_secs(5), try_pull(&mut l))
            .await
            .is_ok_and(|r| r.is_ok())
    } else {
        false
    };
    let stderr = {
        let _ = child.0.kill();
        let out = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // Restart without the cap: everything acked must be there.
    let _child = relay_process::run(&bin, dir.path());
    let owner = connect(&addr, &keys, &recipient.secret_bytes()).await;
    let o = tokio::spawn(owner_loop(owner, ledger.clone(), false));
    settle(&ledger).await;
    o.abort();
    let l = ledger.lock().unwrap();
    let lost = l.acked.difference(&l.received).count();
    let report = format!(
        "full disk: {sent} sent, {acked} acked before the store filled, relay alive {alive}, \
         answering pulls {answering}, {} received after restart, {lost} acked-but-lost; \
         stderr: {}",
        l.received.len(),
        stderr.lines().take(5).collect::<Vec<_>>().join(" | ")
    );
    eprintln!("{report}");
    assert_eq!(lost, 0, "{report}");
    assert!(
        acked > 0 && (acked as u64) < sent,
        "the cap was never reached: {report}"
    );
    assert!(alive && answering, "{report}");
}
