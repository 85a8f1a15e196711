//! `spore bench mailbox`: the mailbox store as a relay uses it, in this process.
//!
//! Store: `MailboxStore::insert` of full payloads spread over many mailboxes, made durable with
//! one `Database::commit` (fsync) per group of 512, as the relay's group-commit thread does.
//! Release: a pull of `PULL_SLOTS` items from a mailbox, then their deletion, committed per
//! group, as a mailbox owner's pull + `Delete` does. Disk: every file under the database after
//! the last commit, per stored item, against the item's own bytes (surb id + payload). Memory:
//! this process's resident set with everything stored (the process holds nothing else).
//! Start-up: the store is closed and opened again with everything stored, as a relay restart
//! does (the index is rebuilt by reading every segment; the files are in the page cache then).

use std::time::Instant;

use crate::error::bail;
use crate::error::{Context, Result};
use serde::Serialize;
use spore_protocol::MailboxId;
use spore_protocol::params::{PAYLOAD_SIZE, PULL_SLOTS, SURB_ID_SIZE};
use spore_relay::{Database, MailboxLimits, MailboxStore};

use crate::{disk_bytes, now_unix, rss_mb, verdict};

pub const TARGET_STORE_PER_S: f64 = 20_000.0;
pub const TARGET_RELEASE_PER_S: f64 = 50_000.0;
pub const TARGET_DISK_RATIO: f64 = 1.3;
pub const TARGET_RSS_MB: f64 = 300.0;
/// Items made durable by one commit.
pub const GROUP: usize = 512;
/// Store and release rates are reported over at most this many items (the first ones), so
/// runs of different sizes compare; the store rate over all items is reported too.
const RATE_WINDOW: usize = 100_000;
/// Stored item bytes the disk figure is compared with.
const ITEM_BYTES: usize = SURB_ID_SIZE + PAYLOAD_SIZE;

#[derive(Debug, Clone)]
pub struct MailboxBenchConfig {
    pub packets: usize,
    /// Where to put the database (a temporary folder when None).
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MailboxReport {
    pub packets: usize,
    pub mailboxes: usize,
    pub group_commit: usize,
    /// Durable inserts per second over the first `min(packets, 100000)`.
    pub store_per_s: f64,
    /// Durable inserts per second over all packets.
    pub store_per_s_all: f64,
    /// Items pulled and deleted (durably) per second.
    pub release_per_s: f64,
    pub released: usize,
    pub disk_bytes: u64,
    pub disk_bytes_per_packet: f64,
    /// `disk_bytes_per_packet / (surb id + payload bytes)`.
    pub disk_ratio: f64,
    pub rss_mb: f64,
    /// Seconds to open the store again with every packet stored (index rebuilt from disk).
    pub reopen_s: f64,
    /// Segment files after the release.
    pub segments: usize,
    /// Records the store found damaged (0 expected).
    pub damaged_records: u64,
}

fn unlimited() -> MailboxLimits {
    MailboxLimits {
        quota_items: u64::MAX,
        quota_bytes: u64::MAX,
        disk_budget_bytes: u64::MAX,
        first_contact_items: u64::MAX,
        first_contact_bytes: u64::MAX,
    }
}

fn mailbox(i: usize) -> MailboxId {
    let mut m = [0u8; 32];
    m[..8].copy_from_slice(&(i as u64).to_be_bytes());
    MailboxId(m)
}

pub fn run(cfg: &MailboxBenchConfig) -> Result<MailboxReport> {
    if cfg.packets < GROUP {
        bail!("--packets must be at least {GROUP}");
    }
    let tmp = tempfile::tempdir()?;
    let path = cfg.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let db = Database::open(&path).context("cannot open the mailbox database")?;
    let store = MailboxStore::open(&db, unlimited())?;
    // 100 items per mailbox: a busy relay's shape (10^4 mailboxes at 10^6 packets).
    let mailboxes = (cfg.packets / 100).max(1);
    let mut payload = [0u8; PAYLOAD_SIZE];
    let now = now_unix();
    let t0 = Instant::now();
    let mut window = None;
    let mut i = 0usize;
    while i < cfg.packets {
        let end = (i + GROUP).min(cfg.packets);
        for k in i..end {
            // Sealed payloads are random-looking: keep the store from compressing them.
            payload[..8].copy_from_slice(&(k as u64).to_be_bytes());
            payload[8..16].copy_from_slice(&rand::random::<[u8; 8]>());
            store
                .insert(&mailbox(k % mailboxes), &[7; SURB_ID_SIZE], &payload, now)?
                .map_err(|r| {
                    crate::error::BenchError::Failed(format!("insert refused: {}", r.reason()))
                })?;
        }
        db.commit()?;
        i = end;
        if window.is_none() && i >= RATE_WINDOW.min(cfg.packets) {
            window = Some(i as f64 / t0.elapsed().as_secs_f64());
        }
    }
    let store_all = cfg.packets as f64 / t0.elapsed().as_secs_f64();
    let disk = disk_bytes(&path);
    let rss = rss_mb(std::process::id());
    drop(store);
    let t0 = Instant::now();
    let store = MailboxStore::open(&db, unlimited())?;
    let reopen_s = t0.elapsed().as_secs_f64();
    if store.total_usage().0 != cfg.packets as u64 {
        bail!(
            "reopened with {} items, stored {}",
            store.total_usage().0,
            cfg.packets
        );
    }

    let to_release = RATE_WINDOW.min(cfg.packets);
    let t0 = Instant::now();
    let mut released = 0usize;
    let mut since_commit = 0usize;
    let mut m = 0usize;
    while released < to_release {
        let mb = mailbox(m % mailboxes);
        let items = store.pull(&mb, PULL_SLOTS)?;
        if items.is_empty() {
            m += 1;
            if m > 2 * mailboxes {
                break;
            }
            continue;
        }
        let handles: Vec<u64> = items.iter().map(|it| it.handle).collect();
        let n = store.delete(&mb, &handles)? as usize;
        released += n;
        since_commit += n;
        if since_commit >= GROUP {
            db.commit()?;
            since_commit = 0;
        }
    }
    db.commit()?;
    let release = released as f64 / t0.elapsed().as_secs_f64();
    let per_packet = disk as f64 / cfg.packets as f64;
    Ok(MailboxReport {
        packets: cfg.packets,
        mailboxes,
        group_commit: GROUP,
        store_per_s: window.unwrap_or(store_all),
        store_per_s_all: store_all,
        release_per_s: release,
        released,
        disk_bytes: disk,
        disk_bytes_per_packet: per_packet,
        disk_ratio: per_packet / ITEM_BYTES as f64,
        rss_mb: rss,
        reopen_s,
        segments: store.segment_count(),
        damaged_records: store.damaged_records(),
    })
}

pub fn render(r: &MailboxReport) -> String {
    format!(
        "spore bench mailbox: {} packets in {} mailboxes, group commit of {}\n\
         {:<40} {:>10.0} /s   target >= {TARGET_STORE_PER_S:.0}: {}\n\
         {:<40} {:>10.0} /s\n\
         {:<40} {:>10.0} /s   target >= {TARGET_RELEASE_PER_S:.0}: {}\n\
         {:<40} {:>10.0} B    = {:.2}x item bytes, target <= {TARGET_DISK_RATIO}: {}\n\
         {:<40} {:>10.0} MB   target < {TARGET_RSS_MB:.0} (at 10^6 packets): {}\n\
         {:<40} {:>10.2} s\n\
         {:<40} {:>10} (damaged records: {})\n",
        r.packets,
        r.mailboxes,
        r.group_commit,
        "durable store (first 10^5)",
        r.store_per_s,
        verdict(r.store_per_s >= TARGET_STORE_PER_S),
        "durable store (all)",
        r.store_per_s_all,
        "pull + delete (durable)",
        r.release_per_s,
        verdict(r.release_per_s >= TARGET_RELEASE_PER_S),
        "disk per stored packet",
        r.disk_bytes_per_packet,
        r.disk_ratio,
        verdict(r.disk_ratio <= TARGET_DISK_RATIO),
        "resident memory with all stored",
        r.rss_mb,
        verdict(r.rss_mb < TARGET_RSS_MB),
        "reopen with all stored (index rebuild)",
        r.reopen_s,
        "segment files after the release",
        r.segments,
        r.damaged_records,
    )
}
