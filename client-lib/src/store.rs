//! The client's durable state in sled, behind a small typed API.
//!
//! | tree | key | value | why |
//! |---|---|---|---|
//! | `out_msgs` | message id | created (unix ms), destination address | a queued message survives a crash |
//! | `out_frags` | message id, index | encoded fragment | removed when its SURB-ack returns |
//! | `in_frags` | message id, index | fragment data | pulled fragments, before reassembly |
//! | `in_partial` | message id | count, received, first seen | reassembly progress |
//! | `in_done` | message id | completed at | swallows late duplicate fragments |
//! | `seen` | dedup key | delivered at | `(origin, txnId)` is delivered once |
//! | `inbox` | inbound id (u64 BE) | the request bundle | handed to the consumer until acked |
//!
//! Every method is blocking (sled); callers on the async runtime keep them short or use
//! `spawn_blocking`. Nothing here flushes except [`Store::flush`]: callers decide what must be
//! durable before they acknowledge anything.

use std::path::Path;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use spore_protocol::codec::{Reader, Writer};
use spore_protocol::fragment::{Admission, Capacity, Held, HoldUnit, admit};
use spore_protocol::{Fragment, MessageId, SporeAddress};

use crate::error::{ClientError, Result, StorageError, StorageErrorKind};

/// The database's errors become the crate's own [`StorageError`] here and nowhere else, so no
/// sled type is part of the public API.
fn storage(database: sled::Error) -> ClientError {
    let kind = match database {
        sled::Error::Io(_) => StorageErrorKind::Io,
        sled::Error::Corruption { .. } => StorageErrorKind::Corrupt,
        _ => StorageErrorKind::Other,
    };
    ClientError::Storage(StorageError::new(kind, &database))
}

/// A transaction either aborted with our own error or failed in the database.
fn transaction(e: TransactionError<ClientError>) -> ClientError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => storage(e),
    }
}

/// Bounds on what inbound reassembly may hold on disk; every one is reachable by a hostile
/// sender who knows our address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimits {
    /// Partial messages held at once.
    pub max_partial_messages: usize,
    /// Fragments held at once over all partial messages.
    pub max_partial_fragments: usize,
}

impl Default for InboundLimits {
    fn default() -> Self {
        Self {
            max_partial_messages: 4096,
            max_partial_fragments: 65_536,
        }
    }
}

/// An unacknowledged fragment of a queued message: (index, encoded fragment).
pub type QueuedFragment = (u16, Vec<u8>);

/// A message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub id: MessageId,
    pub created_ms: u64,
    pub destination: SporeAddress,
}

impl OutgoingMessage {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.created_ms)
            .bytes_u16(&self.destination.to_bytes());
        w.into_vec()
    }

    fn decode(id: MessageId, bytes: &[u8]) -> Result<Self> {
        let bad = |_| ClientError::Corrupt("outbox message");
        let mut r = Reader::new(bytes);
        let created_ms = r.u64().map_err(bad)?;
        let dest = r.bytes_u16(1024).map_err(bad)?;
        r.finish().map_err(bad)?;
        let destination =
            SporeAddress::from_bytes(dest).map_err(|_| ClientError::Corrupt("outbox address"))?;
        Ok(Self {
            id,
            created_ms,
            destination,
        })
    }
}

/// What storing one inbound fragment led to.
#[derive(Debug, PartialEq, Eq)]
pub enum FragmentOutcome {
    /// Already held, or its message was completed before.
    Duplicate,
    /// Held; more fragments are missing.
    Stored,
    /// Refused: a limit is reached or it disagrees with earlier fragments.
    Refused(&'static str),
    /// This fragment completed its message: the padded message, ready to unpack.
    Complete(Vec<u8>),
}

/// Progress of one partial inbound message.
#[derive(Debug, Clone, Copy)]
struct Partial {
    count: u16,
    received: u16,
    data_len: u32,
    first_seen_ms: u64,
}

impl Partial {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u16(self.count)
            .u16(self.received)
            .u32(self.data_len)
            .u64(self.first_seen_ms);
        w.into_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |_| ClientError::Corrupt("partial message");
        let mut r = Reader::new(bytes);
        let p = Self {
            count: r.u16().map_err(bad)?,
            received: r.u16().map_err(bad)?,
            data_len: r.u32().map_err(bad)?,
            first_seen_ms: r.u64().map_err(bad)?,
        };
        r.finish().map_err(bad)?;
        Ok(p)
    }
}

fn frag_key(id: &MessageId, index: u16) -> [u8; 18] {
    let mut k = [0u8; 18];
    let (a, b) = k.split_at_mut(16);
    a.copy_from_slice(id);
    b.copy_from_slice(&index.to_be_bytes());
    k
}

fn split_frag_key(k: &[u8]) -> Result<(MessageId, u16)> {
    let (id, idx) = k
        .split_first_chunk::<16>()
        .ok_or(ClientError::Corrupt("fragment key"))?;
    let idx: [u8; 2] = idx
        .try_into()
        .map_err(|_| ClientError::Corrupt("fragment key"))?;
    Ok((*id, u16::from_be_bytes(idx)))
}

fn message_id(k: &[u8]) -> Result<MessageId> {
    k.try_into().map_err(|_| ClientError::Corrupt("message id"))
}

fn time_value(ms: u64) -> [u8; 8] {
    ms.to_be_bytes()
}

fn read_time(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// The client's sled database.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    out_msgs: sled::Tree,
    out_frags: sled::Tree,
    in_frags: sled::Tree,
    in_partial: sled::Tree,
    in_done: sled::Tree,
    seen: sled::Tree,
    inbox: sled::Tree,
    limits: InboundLimits,
}

impl Store {
    pub fn open(dir: &Path, limits: InboundLimits) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 << 20)
            .open()
            .map_err(storage)?;
        Ok(Self {
            out_msgs: db.open_tree("out_msgs").map_err(storage)?,
            out_frags: db.open_tree("out_frags").map_err(storage)?,
            in_frags: db.open_tree("in_frags").map_err(storage)?,
            in_partial: db.open_tree("in_partial").map_err(storage)?,
            in_done: db.open_tree("in_done").map_err(storage)?,
            seen: db.open_tree("seen").map_err(storage)?,
            inbox: db.open_tree("inbox").map_err(storage)?,
            db,
            limits,
        })
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await.map_err(storage)?;
        Ok(())
    }

    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush().map_err(storage)?;
        Ok(())
    }

    // ----- outbox -----

    /// Queues a message and its encoded fragments atomically (not yet flushed).
    pub fn put_outgoing(&self, message: &OutgoingMessage, fragments: &[Fragment]) -> Result<()> {
        let value = message.encode();
        (&self.out_msgs, &self.out_frags)
            .transaction(|(msgs, frags)| {
                msgs.insert(&message.id[..], value.as_slice())?;
                for f in fragments {
                    frags.insert(&frag_key(&message.id, f.index)[..], f.encode())?;
                }
                Ok::<(), ConflictableTransactionError<ClientError>>(())
            })
            .map_err(transaction)
    }

    /// Every queued message with its unacknowledged fragments (index, encoded fragment).
    pub fn load_outbox(&self) -> Result<Vec<(OutgoingMessage, Vec<QueuedFragment>)>> {
        let mut out = Vec::new();
        for entry in self.out_msgs.iter() {
            let (k, v) = entry.map_err(storage)?;
            let id = message_id(&k)?;
            let message = OutgoingMessage::decode(id, &v)?;
            let mut frags = Vec::new();
            for f in self.out_frags.scan_prefix(id) {
                let (fk, fv) = f.map_err(storage)?;
                let (_, index) = split_frag_key(&fk)?;
                frags.push((index, fv.to_vec()));
            }
            out.push((message, frags));
        }
        out.sort_by_key(|(m, _)| m.created_ms);
        Ok(out)
    }

    /// Marks one fragment acknowledged. Returns `true` if that was the message's last one
    /// (the message is then removed).
    pub fn ack_fragment(&self, id: &MessageId, index: u16) -> Result<bool> {
        if self
            .out_frags
            .remove(frag_key(id, index))
            .map_err(storage)?
            .is_none()
        {
            return Ok(false);
        }
        if self.out_frags.scan_prefix(id).next().is_none() {
            self.out_msgs.remove(id).map_err(storage)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Drops a message and whatever fragments of it are still queued.
    pub fn remove_outgoing(&self, id: &MessageId) -> Result<()> {
        for f in self.out_frags.scan_prefix(id).keys() {
            self.out_frags
                .remove(f.map_err(storage)?)
                .map_err(storage)?;
        }
        self.out_msgs.remove(id).map_err(storage)?;
        Ok(())
    }

    pub fn outbox_len(&self) -> usize {
        self.out_msgs.len()
    }

    // ----- inbound reassembly -----

    /// Stores one inbound fragment and reports whether it completed its message. A completed
    /// message stays on disk until [`Store::finish_message`]. What is admitted is decided by
    /// [`spore_protocol::fragment::admit`], the rule the in-memory reassembler uses too.
    pub fn put_fragment(&self, f: &Fragment, now_ms: u64) -> Result<FragmentOutcome> {
        let data_len = u32::try_from(f.data.len()).unwrap_or(u32::MAX);
        let completed = self.in_done.contains_key(f.message_id).map_err(storage)?;
        let partial = match self.in_partial.get(f.message_id).map_err(storage)? {
            Some(v) if !completed => Some(Partial::decode(&v)?),
            _ => None,
        };
        let key = frag_key(&f.message_id, f.index);
        let at_index = match partial {
            Some(_) => self.in_frags.get(key).map_err(storage)?,
            None => None,
        };
        let held = Held {
            completed,
            partial: partial.map(|p| (p.count, usize::try_from(p.data_len).unwrap_or(usize::MAX))),
            at_index: at_index.as_deref(),
        };
        let new_message = match admit(f, &held) {
            Ok(Admission::Duplicate) => return Ok(FragmentOutcome::Duplicate),
            Ok(Admission::Complete) => return Ok(FragmentOutcome::Complete(f.data.clone())),
            Ok(Admission::Hold { new_message }) => new_message,
            Err(refusal) => return Ok(FragmentOutcome::Refused(refusal.reason())),
        };
        let capacity = Capacity {
            // `len()` walks a tree: count partial messages only when starting a new one.
            messages: if new_message {
                self.in_partial.len()
            } else {
                0
            },
            max_messages: self.limits.max_partial_messages,
            held: self.in_frags.len(),
            max_held: self.limits.max_partial_fragments,
            unit: HoldUnit::Fragments,
        };
        if let Err(refusal) = capacity.check(f, new_message) {
            return Ok(FragmentOutcome::Refused(refusal.reason()));
        }
        let mut partial = partial.unwrap_or(Partial {
            count: f.count,
            received: 0,
            data_len,
            first_seen_ms: now_ms,
        });
        partial.received = partial.received.saturating_add(1);
        (&self.in_frags, &self.in_partial)
            .transaction(|(frags, partials)| {
                frags.insert(&key[..], f.data.as_slice())?;
                partials.insert(&f.message_id[..], partial.encode())?;
                Ok::<(), ConflictableTransactionError<ClientError>>(())
            })
            .map_err(transaction)?;
        if partial.received >= partial.count {
            return self.assemble(&f.message_id, partial);
        }
        Ok(FragmentOutcome::Stored)
    }

    fn assemble(&self, id: &MessageId, partial: Partial) -> Result<FragmentOutcome> {
        let mut padded = Vec::with_capacity(
            usize::from(partial.count).saturating_mul(partial.data_len as usize),
        );
        let mut n = 0u16;
        for entry in self.in_frags.scan_prefix(id) {
            let (k, v) = entry.map_err(storage)?;
            let (_, index) = split_frag_key(&k)?;
            if index != n {
                return Ok(FragmentOutcome::Stored);
            }
            padded.extend_from_slice(&v);
            n = n.saturating_add(1);
        }
        if n != partial.count {
            return Ok(FragmentOutcome::Stored);
        }
        Ok(FragmentOutcome::Complete(padded))
    }

    /// Forgets a message's fragments and remembers it as done, so late duplicates are dropped.
    pub fn finish_message(&self, id: &MessageId, now_ms: u64) -> Result<()> {
        for k in self.in_frags.scan_prefix(id).keys() {
            self.in_frags.remove(k.map_err(storage)?).map_err(storage)?;
        }
        self.in_partial.remove(id).map_err(storage)?;
        self.in_done
            .insert(id, &time_value(now_ms))
            .map_err(storage)?;
        Ok(())
    }

    /// Messages whose fragments are all on disk but which were not finished (a crash between
    /// storing the last fragment and delivering the message). Called once at start.
    pub fn completed_but_unfinished(&self) -> Result<Vec<(MessageId, Vec<u8>)>> {
        let mut out = Vec::new();
        for entry in self.in_partial.iter() {
            let (k, v) = entry.map_err(storage)?;
            let id = message_id(&k)?;
            let p = Partial::decode(&v)?;
            if p.received >= p.count
                && let FragmentOutcome::Complete(padded) = self.assemble(&id, p)?
            {
                out.push((id, padded));
            }
        }
        Ok(out)
    }

    // ----- dedup and inbox -----

    /// Puts a completed inbound request in the inbox unless `dedup_key` was seen before.
    /// Returns the new inbound id, or `None` for a duplicate. Atomic (not yet flushed).
    pub fn deliver(&self, dedup_key: &[u8], bundle: &[u8], now_ms: u64) -> Result<Option<u64>> {
        let id = self.db.generate_id().map_err(storage)?;
        let result = (&self.seen, &self.inbox)
            .transaction(|(seen, inbox)| {
                if seen.get(dedup_key)?.is_some() {
                    return Ok(None);
                }
                seen.insert(dedup_key, &time_value(now_ms))?;
                inbox.insert(&id.to_be_bytes(), bundle)?;
                Ok::<Option<u64>, ConflictableTransactionError<ClientError>>(Some(id))
            })
            .map_err(transaction)?;
        Ok(result)
    }

    /// The first inbox entry with an id above `after`.
    pub fn inbox_after(&self, after: Option<u64>) -> Result<Option<(u64, Vec<u8>)>> {
        let start = after.map(|a| a.saturating_add(1)).unwrap_or(0);
        match self.inbox.range(start.to_be_bytes()..).next() {
            Some(entry) => {
                let (k, v) = entry.map_err(storage)?;
                let id: [u8; 8] = k
                    .as_ref()
                    .try_into()
                    .map_err(|_| ClientError::Corrupt("inbox key"))?;
                Ok(Some((u64::from_be_bytes(id), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    pub fn inbox_get(&self, id: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .inbox
            .get(id.to_be_bytes())
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    /// Removes an inbox entry; returns whether it was there.
    pub fn inbox_remove(&self, id: u64) -> Result<bool> {
        Ok(self
            .inbox
            .remove(id.to_be_bytes())
            .map_err(storage)?
            .is_some())
    }

    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }

    /// Drops partial messages older than `reassembly_ttl_ms`, done markers as old, and dedup
    /// keys older than `dedup_ttl_ms`. Returns the number of partial messages dropped.
    pub fn sweep(&self, now_ms: u64, reassembly_ttl_ms: u64, dedup_ttl_ms: u64) -> Result<usize> {
        let mut dropped = 0;
        let cutoff = now_ms.saturating_sub(reassembly_ttl_ms);
        for entry in self.in_partial.iter() {
            let (k, v) = entry.map_err(storage)?;
            let p = Partial::decode(&v)?;
            if p.first_seen_ms < cutoff {
                for fk in self.in_frags.scan_prefix(&k).keys() {
                    self.in_frags
                        .remove(fk.map_err(storage)?)
                        .map_err(storage)?;
                }
                self.in_partial.remove(&k).map_err(storage)?;
                dropped += 1;
            }
        }
        for entry in self.in_done.iter() {
            let (k, v) = entry.map_err(storage)?;
            if read_time(&v) < cutoff {
                self.in_done.remove(k).map_err(storage)?;
            }
        }
        let dedup_cutoff = now_ms.saturating_sub(dedup_ttl_ms);
        for entry in self.seen.iter() {
            let (k, v) = entry.map_err(storage)?;
            if read_time(&v) < dedup_cutoff {
                self.seen.remove(k).map_err(storage)?;
            }
        }
        Ok(dropped)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use spore_protocol::RelayId;

    fn address() -> SporeAddress {
        SporeAddress {
            mailbox_relays: vec![RelayId([1; 32])],
            mailbox_key: [2; 32],
        }
    }

    fn frag(id: u8, index: u16, count: u16) -> Fragment {
        Fragment {
            message_id: [id; 16],
            index,
            count,
            data: vec![index as u8; 10],
        }
    }

    #[tokio::test]
    async fn outbox_survives_reopen_and_empties_on_acks() {
        let dir = tempfile::tempdir().unwrap();
        let msg = OutgoingMessage {
            id: [9; 16],
            created_ms: 5,
            destination: address(),
        };
        {
            let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
            store
                .put_outgoing(&msg, &[frag(9, 0, 2), frag(9, 1, 2)])
                .unwrap();
            store.flush().await.unwrap();
        }
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        let loaded = store.load_outbox().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].0, msg);
        assert_eq!(loaded[0].1.len(), 2);
        assert!(!store.ack_fragment(&msg.id, 0).unwrap());
        assert!(
            !store.ack_fragment(&msg.id, 0).unwrap(),
            "a repeated ack is a no-op"
        );
        assert!(store.ack_fragment(&msg.id, 1).unwrap());
        assert_eq!(store.outbox_len(), 0);
    }

    #[test]
    fn fragments_reassemble_in_any_order_and_late_duplicates_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        assert_eq!(
            store.put_fragment(&frag(1, 2, 4), 0).unwrap(),
            FragmentOutcome::Stored
        );
        assert_eq!(
            store.put_fragment(&frag(1, 2, 4), 0).unwrap(),
            FragmentOutcome::Duplicate
        );
        store.put_fragment(&frag(1, 0, 4), 0).unwrap();
        store.put_fragment(&frag(1, 3, 4), 0).unwrap();
        let FragmentOutcome::Complete(padded) = store.put_fragment(&frag(1, 1, 4), 0).unwrap()
        else {
            panic!("not complete");
        };
        assert_eq!(padded.len(), 40);
        assert_eq!(&padded[10..20], &[1; 10]);
        store.finish_message(&[1; 16], 0).unwrap();
        assert_eq!(
            store.put_fragment(&frag(1, 1, 4), 0).unwrap(),
            FragmentOutcome::Duplicate
        );
    }

    #[test]
    fn partial_state_survives_reopen_and_completes_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
            store.put_fragment(&frag(3, 0, 2), 0).unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        assert!(matches!(
            store.put_fragment(&frag(3, 1, 2), 0).unwrap(),
            FragmentOutcome::Complete(_)
        ));
        // Crash before finish_message: the restart pass finds it again.
        assert_eq!(store.completed_but_unfinished().unwrap().len(), 1);
    }

    #[test]
    fn inconsistent_and_excess_fragments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let limits = InboundLimits {
            max_partial_messages: 1,
            max_partial_fragments: 100,
        };
        let store = Store::open(dir.path(), limits).unwrap();
        store.put_fragment(&frag(1, 0, 4), 0).unwrap();
        assert!(matches!(
            store.put_fragment(&frag(1, 1, 8), 0).unwrap(),
            FragmentOutcome::Refused(_)
        ));
        assert!(matches!(
            store.put_fragment(&frag(2, 1, 8), 0).unwrap(),
            FragmentOutcome::Refused(_)
        ));
    }

    #[test]
    fn dedup_key_delivers_once_and_inbox_persists_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let first;
        {
            let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
            first = store.deliver(b"a.example/txn1", b"bundle", 1).unwrap();
            assert!(first.is_some());
            assert_eq!(
                store.deliver(b"a.example/txn1", b"bundle", 2).unwrap(),
                None
            );
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        assert_eq!(store.deliver(b"a.example/txn1", b"again", 3).unwrap(), None);
        let (id, bytes) = store.inbox_after(None).unwrap().unwrap();
        assert_eq!(Some(id), first);
        assert_eq!(bytes, b"bundle");
        assert!(store.inbox_after(Some(id)).unwrap().is_none());
        assert!(store.inbox_remove(id).unwrap());
        assert_eq!(store.inbox_len(), 0);
        // Still a duplicate after the consumer acked it.
        assert_eq!(store.deliver(b"a.example/txn1", b"again", 3).unwrap(), None);
    }

    #[test]
    fn storage_errors_keep_the_database_message_and_say_their_kind() {
        let e = storage(sled::Error::Io(std::io::Error::other("lock held")));
        let ClientError::Storage(stored) = &e else {
            panic!("not a storage error: {e:?}");
        };
        assert_eq!(stored.kind(), StorageErrorKind::Io);
        assert_eq!(
            e.to_string(),
            format!(
                "storage: {}",
                sled::Error::Io(std::io::Error::other("lock held"))
            )
        );
        let ClientError::Storage(e) = storage(sled::Error::Unsupported("x".into())) else {
            panic!("not a storage error");
        };
        assert_eq!(e.kind(), StorageErrorKind::Other);
    }

    #[test]
    fn sweep_drops_stale_partials_and_old_dedup_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        store.put_fragment(&frag(1, 0, 2), 0).unwrap();
        store.deliver(b"k", b"b", 0).unwrap();
        assert_eq!(store.sweep(1000, 500, 500).unwrap(), 1);
        assert!(store.deliver(b"k", b"b", 1000).unwrap().is_some());
    }
}
