//! The client's durable state in SQLite, behind a small typed API.
//!
//! | table | key | columns | why |
//! |---|---|---|---|
//! | `out_msgs` | message id | created (unix ms), destination address, expires (unix ms, answers only) | a queued message survives a crash |
//! | `out_frags` | message id, index | encoded fragment | removed when its SURB-ack returns |
//! | `in_frags` | message id, index | fragment data | pulled fragments, before reassembly |
//! | `in_partial` | message id | count, received, data length, first seen | reassembly progress |
//! | `in_sender` | message id | sender mailbox key | a message's fragments all come from one sender |
//! | `in_done` | message id | completed at | swallows late duplicate fragments |
//! | `seen` | dedup key | delivered at | `(sender key, origin, txnId)` is delivered once |
//! | `inbox` | inbound id | the request bundle | handed to the consumer until acked |
//! | `cap_given` | peer label, generation | revoked | capabilities we gave (derived from our key, never stored) |
//! | `cap_learned` | peer mailbox key | capability | what a peer gave us, used when we send to it |
//!
//! Why SQLite and these settings (issue 15, "data at rest"): once a message is delivered and
//! acked, only ids stay (`in_done`, `seen`), and its content must be gone from the disk, not
//! merely unreachable. A log-structured store (sled, used before) keeps old values in its log
//! until its own compaction. Here:
//! - `secure_delete=ON` overwrites deleted rows and freed pages with zeros in place;
//! - `journal_mode=WAL` with `synchronous=NORMAL`: a commit reaches the OS (it survives a
//!   process crash) but is made durable by [`Store::flush`], a `wal_checkpoint(TRUNCATE)` that
//!   syncs the log, copies it into the database (overwriting old pages), syncs that, and
//!   truncates the log to zero, so no journal keeps old pages after a flush. Callers flush
//!   before they acknowledge anything, as with sled; a power loss loses at most what was not
//!   flushed and never corrupts the file;
//! - `locking_mode=EXCLUSIVE`: the connection takes the database's lock at open and holds it
//!   until the store is dropped, so one data dir cannot be opened twice (this process or
//!   another); a second open fails with [`StorageErrorKind::Io`]. It also keeps the WAL index
//!   in memory, so there is no `-shm` file;
//! - the database file is created 0600, and SQLite gives its log the same mode.
//!
//! What this does not reach: blocks the filesystem freed when the log was truncated keep their
//! bytes until reused (only encryption at rest would cover the raw device).
//!
//! Every method is blocking; callers on the async runtime keep them short or use
//! `spawn_blocking`. Nothing here makes writes durable except [`Store::flush`]: callers decide
//! what must be durable before they acknowledge anything.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use spore_protocol::fragment::{Admission, Capacity, Held, HoldUnit, admit};
use spore_protocol::{Fragment, MessageId, SporeAddress};

use crate::error::{ClientError, Result, StorageError, StorageErrorKind};

/// The database file inside the data dir.
const DATABASE_FILE: &str = "store.sqlite3";

/// The database's errors become the crate's own [`StorageError`] here and nowhere else, so no
/// rusqlite type is part of the public API. A lock held by another store is `Io`, the kind
/// the transport waits out when it reopens a data dir.
fn storage(database: rusqlite::Error) -> ClientError {
    let kind = match database.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly
            | ErrorCode::FileLockingProtocolFailed,
        ) => StorageErrorKind::Io,
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StorageErrorKind::Corrupt,
        _ => StorageErrorKind::Other,
    };
    ClientError::Storage(StorageError::new(kind, &database))
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Times and counts are `u64` in the API and `INTEGER` (i64) in SQLite; times past year
/// 292 million saturate.
fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn api_u64(v: i64, what: &'static str) -> Result<u64> {
    u64::try_from(v).map_err(|_| ClientError::Corrupt(what))
}

fn api_u16(v: i64, what: &'static str) -> Result<u16> {
    u16::try_from(v).map_err(|_| ClientError::Corrupt(what))
}

fn message_id(v: &[u8]) -> Result<MessageId> {
    v.try_into().map_err(|_| ClientError::Corrupt("message id"))
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS out_msgs (
        id BLOB PRIMARY KEY NOT NULL,
        created_ms INTEGER NOT NULL,
        destination BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS out_frags (
        id BLOB NOT NULL,
        idx INTEGER NOT NULL,
        fragment BLOB NOT NULL,
        PRIMARY KEY (id, idx)
    );
    CREATE TABLE IF NOT EXISTS in_frags (
        id BLOB NOT NULL,
        idx INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (id, idx)
    );
    CREATE TABLE IF NOT EXISTS in_partial (
        id BLOB PRIMARY KEY NOT NULL,
        count INTEGER NOT NULL,
        received INTEGER NOT NULL,
        data_len INTEGER NOT NULL,
        first_seen_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS in_sender (
        id BLOB PRIMARY KEY NOT NULL,
        sender BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS in_done (
        id BLOB PRIMARY KEY NOT NULL,
        done_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS seen (
        key BLOB PRIMARY KEY NOT NULL,
        delivered_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- The next send-order number per destination (its mailbox key), advanced in the same
    -- transaction that queues the message carrying it: a restart continues the sequence and
    -- a crash never leaves a number used by a message that was not queued.
    CREATE TABLE IF NOT EXISTS out_sequence (
        destination BLOB PRIMARY KEY NOT NULL,
        next INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- AUTOINCREMENT: an inbound id is never reused after its entry is removed, so a consumer's
    -- cursor (`inbox_after`) cannot skip a new entry that took an old id.
    CREATE TABLE IF NOT EXISTS inbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        bundle BLOB NOT NULL
    );
    -- Per-contact capabilities (issue 16): one row per capability we gave a peer; the newest
    -- generation of a peer is its current one unless revoked.
    CREATE TABLE IF NOT EXISTS cap_given (
        peer TEXT NOT NULL,
        generation INTEGER NOT NULL,
        revoked INTEGER NOT NULL,
        PRIMARY KEY (peer, generation)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS cap_learned (
        mailbox_key BLOB PRIMARY KEY NOT NULL,
        capability BLOB NOT NULL
    ) WITHOUT ROWID;
";

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
    /// When (Unix ms) nobody wants the message any more, if sooner than its lifetime: an
    /// answer by store-and-forward is worth sending only until its caller gives up, and a
    /// megabyte answer retransmitted after that takes the sender's packet rate from
    /// everything else.
    pub expires_ms: Option<u64>,
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
    fn from_row(count: i64, received: i64, data_len: i64, first_seen_ms: i64) -> Result<Self> {
        const WHAT: &str = "partial message";
        Ok(Self {
            count: api_u16(count, WHAT)?,
            received: api_u16(received, WHAT)?,
            data_len: u32::try_from(data_len).map_err(|_| ClientError::Corrupt(WHAT))?,
            first_seen_ms: api_u64(first_seen_ms, WHAT)?,
        })
    }
}

/// The client's SQLite database. Clones share one connection (and its lock); the last clone
/// dropped closes it, which checkpoints and removes the log.
#[derive(Clone)]
pub struct Store {
    db: Arc<Mutex<Connection>>,
    limits: InboundLimits,
    flushes: Arc<FlushGroup>,
}

/// Group commit for [`Store::flush`]: a flush costs several `fsync`s whatever it carries, and
/// while one runs, others asked for (the pull's items being stored, the application's acks,
/// queued sends) wait and share the next one instead of each paying for their own.
#[derive(Default)]
struct FlushGroup {
    /// Flushes asked for so far (each caller takes a number after its writes committed).
    asked: AtomicU64,
    /// Every number up to this one is durable.
    covered: AtomicU64,
    /// One flush at a time.
    running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn open(dir: &Path, limits: InboundLimits) -> Result<Self> {
        let path = dir.join(DATABASE_FILE);
        create_private(&path)?;
        let db = Connection::open(&path).map_err(storage)?;
        // Fail at once if another store holds the lock: the transport waits and retries.
        db.busy_timeout(std::time::Duration::ZERO)
            .map_err(storage)?;
        // Before the journal mode: in exclusive mode WAL keeps its index in memory (no -shm).
        db.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(storage)?;
        let mode: String = db
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(storage)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(storage_other(format!("journal_mode is {mode}, not wal")));
        }
        db.pragma_update(None, "synchronous", "NORMAL")
            .map_err(storage)?;
        let secure: i64 = db
            .pragma_update_and_check(None, "secure_delete", "ON", |row| row.get(0))
            .map_err(storage)?;
        if secure != 1 {
            return Err(storage_other("secure_delete cannot be turned on".into()));
        }
        // The first write takes the exclusive lock, held until the connection closes.
        db.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))
            .map_err(storage)?;
        add_expires_column(&db)?;
        warn_about_sled_data(dir);
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
            limits,
            flushes: Arc::default(),
        })
    }

    /// The connection. A panic while it was held rolled its transaction back (rusqlite's
    /// `Transaction` drops to a rollback), so a poisoned lock still guards a consistent
    /// database.
    fn db(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes everything written so far durable, and leaves no log with old pages behind.
    /// Callers that ask while a flush runs share the next one (group commit).
    pub async fn flush(&self) -> Result<()> {
        let group = &self.flushes;
        let ticket = group.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = group.running.lock().await;
        if group.covered.load(Ordering::SeqCst) >= ticket {
            return Ok(()); // a flush that started after our writes has finished
        }
        // Everyone who has a number by now committed before this flush starts.
        let upto = group.asked.load(Ordering::SeqCst);
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush_blocking())
            .await
            .map_err(|_| ClientError::Stopped)??;
        group.covered.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    pub fn flush_blocking(&self) -> Result<()> {
        let db = self.db();
        // (busy, log frames, checkpointed frames); busy = 1 means the checkpoint did not run
        // to completion, which a single exclusive connection never sees.
        let busy: i64 = db
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .map_err(storage)?;
        if busy != 0 {
            return Err(storage_other("wal checkpoint did not complete".into()));
        }
        Ok(())
    }

    // ----- outbox -----

    /// Queues a message and its encoded fragments atomically (not yet flushed).
    pub fn put_outgoing(&self, message: &OutgoingMessage, fragments: &[Fragment]) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction().map_err(storage)?;
        insert_outgoing(&tx, message, fragments)?;
        tx.commit().map_err(storage)
    }

    /// Takes the next send-order number for `destination` (0 for a new one), builds the
    /// message that carries it with `build`, and queues it, all in one transaction (not yet
    /// flushed): numbers are used in order, never twice, and none is lost to a crash
    /// between taking it and queueing its message.
    pub fn put_sequenced<T>(
        &self,
        destination: &[u8; 32],
        build: impl FnOnce(u64) -> Result<(OutgoingMessage, Vec<Fragment>, T)>,
    ) -> Result<(OutgoingMessage, Vec<Fragment>, T)> {
        let mut db = self.db();
        let tx = db.transaction().map_err(storage)?;
        let next: Option<i64> = tx
            .query_row(
                "SELECT next FROM out_sequence WHERE destination = ?1",
                params![&destination[..]],
                |row| row.get(0),
            )
            .optional()
            .map_err(storage)?;
        let sequence = match next {
            Some(n) => api_u64(n, "send sequence")?,
            None => 0,
        };
        let (message, fragments, extra) = build(sequence)?;
        insert_outgoing(&tx, &message, &fragments)?;
        tx.execute(
            "INSERT OR REPLACE INTO out_sequence (destination, next) VALUES (?1, ?2)",
            params![&destination[..], sql_u64(sequence.saturating_add(1))],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok((message, fragments, extra))
    }

    /// Every queued message with its unacknowledged fragments (index, encoded fragment).
    pub fn load_outbox(&self) -> Result<Vec<(OutgoingMessage, Vec<QueuedFragment>)>> {
        let db = self.db();
        let mut messages = db
            .prepare_cached(
                "SELECT id, created_ms, destination, expires_ms FROM out_msgs \
                 ORDER BY created_ms, id",
            )
            .map_err(storage)?;
        let rows = messages
            .query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                ))
            })
            .map_err(storage)?;
        let mut fragments = db
            .prepare_cached("SELECT idx, fragment FROM out_frags WHERE id = ?1 ORDER BY idx")
            .map_err(storage)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, created_ms, destination, expires_ms) = row.map_err(storage)?;
            let id = message_id(&id)?;
            let message = OutgoingMessage {
                id,
                created_ms: api_u64(created_ms, "outbox message")?,
                destination: SporeAddress::from_bytes(&destination)
                    .map_err(|_| ClientError::Corrupt("outbox address"))?,
                expires_ms: expires_ms
                    .map(|e| api_u64(e, "outbox expiry"))
                    .transpose()?,
            };
            let mut frags = Vec::new();
            let rows = fragments
                .query_map([&id[..]], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
                })
                .map_err(storage)?;
            for row in rows {
                let (index, fragment) = row.map_err(storage)?;
                frags.push((api_u16(index, "fragment key")?, fragment));
            }
            out.push((message, frags));
        }
        Ok(out)
    }

    /// Marks one fragment acknowledged. Returns `true` if that was the message's last one
    /// (the message is then removed).
    pub fn ack_fragment(&self, id: &MessageId, index: u16) -> Result<bool> {
        let mut db = self.db();
        let tx = db.transaction().map_err(storage)?;
        let removed = tx
            .prepare_cached("DELETE FROM out_frags WHERE id = ?1 AND idx = ?2")
            .and_then(|mut s| s.execute(params![&id[..], index]))
            .map_err(storage)?;
        if removed == 0 {
            return Ok(false);
        }
        let more = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM out_frags WHERE id = ?1)")
            .and_then(|mut s| s.query_row([&id[..]], |row| row.get::<_, bool>(0)))
            .map_err(storage)?;
        if !more {
            tx.prepare_cached("DELETE FROM out_msgs WHERE id = ?1")
                .and_then(|mut s| s.execute([&id[..]]))
                .map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        Ok(!more)
    }

    /// Drops a message and whatever fragments of it are still queued.
    pub fn remove_outgoing(&self, id: &MessageId) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction().map_err(storage)?;
        tx.execute("DELETE FROM out_frags WHERE id = ?1", [&id[..]])
            .map_err(storage)?;
        tx.execute("DELETE FROM out_msgs WHERE id = ?1", [&id[..]])
            .map_err(storage)?;
        tx.commit().map_err(storage)
    }

    pub fn outbox_len(&self) -> usize {
        self.count("SELECT COUNT(*) FROM out_msgs")
    }

    /// A row count for the infallible `*_len` methods: a failing database counts as empty
    /// (and says so in the log); the next write reports the failure as an error.
    fn count(&self, sql: &str) -> usize {
        let counted = self
            .db()
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([], |row| row.get::<_, i64>(0)));
        match counted {
            Ok(n) => usize::try_from(n).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot count rows in the store");
                0
            }
        }
    }

    // ----- inbound reassembly -----

    /// Stores one inbound fragment and reports whether it completed its message. A completed
    /// message stays on disk until [`Store::finish_message`]. What is admitted is decided by
    /// [`spore_protocol::fragment::admit`], the rule the in-memory reassembler uses too.
    pub fn put_fragment(&self, f: &Fragment, now_ms: u64) -> Result<FragmentOutcome> {
        let mut db = self.db();
        let data_len = u32::try_from(f.data.len()).unwrap_or(u32::MAX);
        let id = &f.message_id[..];
        let completed = db
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM in_done WHERE id = ?1)")
            .and_then(|mut s| s.query_row([id], |row| row.get::<_, bool>(0)))
            .map_err(storage)?;
        let partial = if completed {
            None
        } else {
            db.prepare_cached(
                "SELECT count, received, data_len, first_seen_ms FROM in_partial WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })
                .optional()
            })
            .map_err(storage)?
            .map(|(c, r, d, t)| Partial::from_row(c, r, d, t))
            .transpose()?
        };
        let at_index: Option<Vec<u8>> = match partial {
            Some(_) => db
                .prepare_cached("SELECT data FROM in_frags WHERE id = ?1 AND idx = ?2")
                .and_then(|mut s| {
                    s.query_row(params![id, f.index], |row| row.get(0))
                        .optional()
                })
                .map_err(storage)?,
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
        let count = |sql: &str| -> Result<usize> {
            db.prepare_cached(sql)
                .and_then(|mut s| s.query_row([], |row| row.get::<_, i64>(0)))
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .map_err(storage)
        };
        let capacity = Capacity {
            // Counting walks a table: count partial messages only when starting a new one.
            messages: if new_message {
                count("SELECT COUNT(*) FROM in_partial")?
            } else {
                0
            },
            max_messages: self.limits.max_partial_messages,
            held: count("SELECT COUNT(*) FROM in_frags")?,
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
        let tx = db.transaction().map_err(storage)?;
        tx.prepare_cached("INSERT OR REPLACE INTO in_frags (id, idx, data) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![id, f.index, f.data]))
            .map_err(storage)?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO in_partial (id, count, received, data_len, first_seen_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                partial.count,
                partial.received,
                partial.data_len,
                sql_u64(partial.first_seen_ms)
            ])
        })
        .map_err(storage)?;
        tx.commit().map_err(storage)?;
        if partial.received >= partial.count {
            return assemble(&db, &f.message_id, partial);
        }
        Ok(FragmentOutcome::Stored)
    }

    /// Binds a multi-fragment message to the mailbox key that sealed its first fragment, and
    /// reports whether `sender` is that key: a message's fragments must all come from one
    /// sender, so that the sender of a completed message is authenticated for all of its
    /// bytes. Called before [`Store::put_fragment`], so a held fragment always has its sender.
    pub fn bind_sender(&self, id: &MessageId, sender: &[u8; 32]) -> Result<bool> {
        let db = self.db();
        db.prepare_cached("INSERT OR IGNORE INTO in_sender (id, sender) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![&id[..], &sender[..]]))
            .map_err(storage)?;
        let bound: Vec<u8> = db
            .prepare_cached("SELECT sender FROM in_sender WHERE id = ?1")
            .and_then(|mut s| s.query_row([&id[..]], |row| row.get(0)))
            .map_err(storage)?;
        Ok(bound == sender[..])
    }

    /// The sender [`Store::bind_sender`] bound a message to.
    pub fn sender_of(&self, id: &MessageId) -> Result<Option<[u8; 32]>> {
        let bound: Option<Vec<u8>> = self
            .db()
            .prepare_cached("SELECT sender FROM in_sender WHERE id = ?1")
            .and_then(|mut s| s.query_row([&id[..]], |row| row.get(0)).optional())
            .map_err(storage)?;
        bound
            .map(|b| {
                <[u8; 32]>::try_from(b.as_slice())
                    .map_err(|_| storage_other("sender key length".into()))
            })
            .transpose()
    }

    /// Forgets a message's fragments and remembers it as done, so late duplicates are dropped.
    pub fn finish_message(&self, id: &MessageId, now_ms: u64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction().map_err(storage)?;
        tx.prepare_cached("DELETE FROM in_sender WHERE id = ?1")
            .and_then(|mut s| s.execute([&id[..]]))
            .map_err(storage)?;
        tx.prepare_cached("DELETE FROM in_frags WHERE id = ?1")
            .and_then(|mut s| s.execute([&id[..]]))
            .map_err(storage)?;
        tx.prepare_cached("DELETE FROM in_partial WHERE id = ?1")
            .and_then(|mut s| s.execute([&id[..]]))
            .map_err(storage)?;
        tx.prepare_cached("INSERT OR REPLACE INTO in_done (id, done_ms) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![&id[..], sql_u64(now_ms)]))
            .map_err(storage)?;
        tx.commit().map_err(storage)
    }

    /// Messages whose fragments are all on disk but which were not finished (a crash between
    /// storing the last fragment and delivering the message). Called once at start.
    pub fn completed_but_unfinished(&self) -> Result<Vec<(MessageId, Vec<u8>)>> {
        let db = self.db();
        let mut statement = db
            .prepare(
                "SELECT id, count, received, data_len, first_seen_ms FROM in_partial \
                 WHERE received >= count ORDER BY id",
            )
            .map_err(storage)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .map_err(storage)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, c, r, d, t) = row.map_err(storage)?;
            let id = message_id(&id)?;
            if let FragmentOutcome::Complete(padded) =
                assemble(&db, &id, Partial::from_row(c, r, d, t)?)?
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
        let mut db = self.db();
        let tx = db.transaction().map_err(storage)?;
        let fresh = tx
            .prepare_cached("INSERT OR IGNORE INTO seen (key, delivered_ms) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![dedup_key, sql_u64(now_ms)]))
            .map_err(storage)?;
        if fresh == 0 {
            return Ok(None);
        }
        tx.prepare_cached("INSERT INTO inbox (bundle) VALUES (?1)")
            .and_then(|mut s| s.execute([bundle]))
            .map_err(storage)?;
        let id = api_u64(tx.last_insert_rowid(), "inbox key")?;
        tx.commit().map_err(storage)?;
        Ok(Some(id))
    }

    /// The first inbox entry with an id above `after`.
    pub fn inbox_after(&self, after: Option<u64>) -> Result<Option<(u64, Vec<u8>)>> {
        let start = after.map(|a| a.saturating_add(1)).unwrap_or(0);
        let Ok(start) = i64::try_from(start) else {
            return Ok(None);
        };
        let row = self
            .db()
            .prepare_cached("SELECT id, bundle FROM inbox WHERE id >= ?1 ORDER BY id LIMIT 1")
            .and_then(|mut s| {
                s.query_row([start], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
                })
                .optional()
            })
            .map_err(storage)?;
        row.map(|(id, bundle)| Ok((api_u64(id, "inbox key")?, bundle)))
            .transpose()
    }

    pub fn inbox_get(&self, id: u64) -> Result<Option<Vec<u8>>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.db()
            .prepare_cached("SELECT bundle FROM inbox WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |row| row.get(0)).optional())
            .map_err(storage)
    }

    /// Removes an inbox entry; returns whether it was there. Its bytes are overwritten in the
    /// database (secure_delete); the next [`Store::flush`] clears them from the log.
    pub fn inbox_remove(&self, id: u64) -> Result<bool> {
        Ok(self.inbox_remove_many(&[id])? > 0)
    }

    /// [`Store::inbox_remove`] for many, in one transaction; how many were there.
    pub fn inbox_remove_many(&self, ids: &[u64]) -> Result<usize> {
        let mut db = self.db();
        let tx = db.transaction().map_err(storage)?;
        let mut removed = 0;
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM inbox WHERE id = ?1")
                .map_err(storage)?;
            for id in ids {
                if let Ok(id) = i64::try_from(*id) {
                    removed += delete.execute([id]).map_err(storage)?;
                }
            }
        }
        tx.commit().map_err(storage)?;
        Ok(removed)
    }

    pub fn inbox_len(&self) -> usize {
        self.count("SELECT COUNT(*) FROM inbox")
    }

    /// Drops partial messages older than `reassembly_ttl_ms`, done markers as old, and dedup
    /// keys older than `dedup_ttl_ms`. Returns the number of partial messages dropped.
    pub fn sweep(&self, now_ms: u64, reassembly_ttl_ms: u64, dedup_ttl_ms: u64) -> Result<usize> {
        let cutoff = sql_u64(now_ms.saturating_sub(reassembly_ttl_ms));
        let dedup_cutoff = sql_u64(now_ms.saturating_sub(dedup_ttl_ms));
        let mut db = self.db();
        let tx = db.transaction().map_err(storage)?;
        tx.execute(
            "DELETE FROM in_frags WHERE id IN \
             (SELECT id FROM in_partial WHERE first_seen_ms < ?1)",
            [cutoff],
        )
        .map_err(storage)?;
        let dropped = tx
            .execute("DELETE FROM in_partial WHERE first_seen_ms < ?1", [cutoff])
            .map_err(storage)?;
        // Senders of messages no longer held (dropped above, or refused after binding).
        tx.execute(
            "DELETE FROM in_sender WHERE id NOT IN (SELECT id FROM in_partial)",
            [],
        )
        .map_err(storage)?;
        tx.execute("DELETE FROM in_done WHERE done_ms < ?1", [cutoff])
            .map_err(storage)?;
        tx.execute("DELETE FROM seen WHERE delivered_ms < ?1", [dedup_cutoff])
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(dropped)
    }
}

/// The padded message from a partial message's fragments, if all of them are held in order.
fn assemble(db: &Connection, id: &MessageId, partial: Partial) -> Result<FragmentOutcome> {
    let mut padded =
        Vec::with_capacity(usize::from(partial.count).saturating_mul(partial.data_len as usize));
    let mut statement = db
        .prepare_cached("SELECT idx, data FROM in_frags WHERE id = ?1 ORDER BY idx")
        .map_err(storage)?;
    let rows = statement
        .query_map([&id[..]], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .map_err(storage)?;
    let mut n = 0u16;
    for row in rows {
        let (index, data) = row.map_err(storage)?;
        if api_u16(index, "fragment key")? != n {
            return Ok(FragmentOutcome::Stored);
        }
        padded.extend_from_slice(&data);
        n = n.saturating_add(1);
    }
    if n != partial.count {
        return Ok(FragmentOutcome::Stored);
    }
    Ok(FragmentOutcome::Complete(padded))
}

/// Stores written before answers had a deadline have no `out_msgs.expires_ms`: added empty
/// (every message queued then keeps its ordinary lifetime).
fn add_expires_column(db: &Connection) -> Result<()> {
    let has: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('out_msgs') WHERE name = 'expires_ms'",
            [],
            |row| row.get(0),
        )
        .map_err(storage)?;
    if has == 0 {
        db.execute_batch("ALTER TABLE out_msgs ADD COLUMN expires_ms INTEGER")
            .map_err(storage)?;
    }
    Ok(())
}

/// The inserts of [`Store::put_outgoing`], inside the caller's transaction.
fn insert_outgoing(
    tx: &rusqlite::Transaction<'_>,
    message: &OutgoingMessage,
    fragments: &[Fragment],
) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO out_msgs (id, created_ms, destination, expires_ms) \
         VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| {
        s.execute(params![
            &message.id[..],
            sql_u64(message.created_ms),
            message.destination.to_bytes(),
            message.expires_ms.map(sql_u64),
        ])
    })
    .map_err(storage)?;
    let mut insert = tx
        .prepare_cached("INSERT OR REPLACE INTO out_frags (id, idx, fragment) VALUES (?1, ?2, ?3)")
        .map_err(storage)?;
    for f in fragments {
        insert
            .execute(params![&message.id[..], f.index, f.encode()])
            .map_err(storage)?;
    }
    Ok(())
}

fn storage_other(message: String) -> ClientError {
    ClientError::Storage(StorageError::new(StorageErrorKind::Other, &message))
}

/// Creates the database file readable by its owner only (SQLite would create it 0644, and gives
/// its log the database's mode). An existing file is only chmod-ed, never opened here: closing
/// any descriptor of a file drops this process's POSIX locks on it, among them the lock of a
/// store that has it open.
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(file_error(path))
        }
        Err(e) => Err(file_error(path)(e)),
    }
}

/// A data dir written by a version whose store was sled: its queue is not carried over.
fn warn_about_sled_data(dir: &Path) {
    if dir.join("conf").is_file() && dir.join("db").is_file() {
        tracing::warn!(
            dir = %dir.display(),
            "this data dir holds a store of an earlier version (sled: conf, db, snap.*); its \
             outbox, inbox and dedup tables are not carried over and can be deleted"
        );
    }
}

/// One capability we gave: the peer's label, its generation, and whether it is revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GivenCapability {
    pub peer: String,
    pub generation: u32,
    pub revoked: bool,
}

impl Store {
    // ----- capabilities (issue 16) -----

    /// The current generation of the capability we give `peer`, made (the next generation) if
    /// the peer has none, and whether it was made now. Not yet flushed.
    pub fn capability_generation(&self, peer: &str) -> Result<(u32, bool)> {
        let mut db = self.db();
        let tx = db.transaction().map_err(storage)?;
        let current: Option<(i64, bool)> = tx
            .query_row(
                "SELECT generation, revoked FROM cap_given WHERE peer = ?1
                 ORDER BY generation DESC LIMIT 1",
                params![peer],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(storage)?;
        let generation = match current {
            Some((g, false)) => {
                let g = u32::try_from(g).map_err(|_| ClientError::Corrupt("capability"))?;
                return Ok((g, false));
            }
            Some((g, true)) => g + 1,
            None => 0,
        };
        tx.execute(
            "INSERT INTO cap_given (peer, generation, revoked) VALUES (?1, ?2, 0)",
            params![peer, generation],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)?;
        let generation =
            u32::try_from(generation).map_err(|_| ClientError::Corrupt("capability"))?;
        Ok((generation, true))
    }

    /// Revokes `peer`'s current capability (if any); its next one will be a new generation.
    /// Returns the revoked generation. Not yet flushed.
    pub fn revoke_capability(&self, peer: &str) -> Result<Option<u32>> {
        let db = self.db();
        let revoked: Option<i64> = db
            .query_row(
                "UPDATE cap_given SET revoked = 1
                 WHERE peer = ?1 AND revoked = 0 RETURNING generation",
                params![peer],
                |row| row.get(0),
            )
            .optional()
            .map_err(storage)?;
        revoked
            .map(|g| u32::try_from(g).map_err(|_| ClientError::Corrupt("capability")))
            .transpose()
    }

    /// Every capability we ever gave, for registering them with the mailbox relay.
    pub fn given_capabilities(&self) -> Result<Vec<GivenCapability>> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT peer, generation, revoked FROM cap_given ORDER BY peer, generation")
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, bool>(2)?,
                ))
            })
            .map_err(storage)?;
        let mut out = Vec::new();
        for row in rows {
            let (peer, generation, revoked) = row.map_err(storage)?;
            let generation =
                u32::try_from(generation).map_err(|_| ClientError::Corrupt("capability"))?;
            out.push(GivenCapability {
                peer,
                generation,
                revoked,
            });
        }
        Ok(out)
    }

    /// Remembers the capability the peer with this mailbox key gave us. Not yet flushed.
    pub fn learn_capability(&self, mailbox_key: &[u8; 32], capability: &[u8; 32]) -> Result<()> {
        self.db()
            .execute(
                "INSERT INTO cap_learned (mailbox_key, capability) VALUES (?1, ?2)
                 ON CONFLICT (mailbox_key) DO UPDATE SET capability = excluded.capability",
                params![&mailbox_key[..], &capability[..]],
            )
            .map_err(storage)?;
        Ok(())
    }

    /// The capability the peer with this mailbox key gave us, if any.
    pub fn learned_capability(&self, mailbox_key: &[u8; 32]) -> Result<Option<[u8; 32]>> {
        let bytes: Option<Vec<u8>> = self
            .db()
            .query_row(
                "SELECT capability FROM cap_learned WHERE mailbox_key = ?1",
                params![&mailbox_key[..]],
                |row| row.get(0),
            )
            .optional()
            .map_err(storage)?;
        bytes
            .map(|b| {
                b.try_into()
                    .map_err(|_| ClientError::Corrupt("learned capability"))
            })
            .transpose()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use spore_protocol::RelayId;

    fn address() -> SporeAddress {
        SporeAddress {
            capability: None,
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

    #[test]
    fn capabilities_given_and_learned_survive_reopen_and_revocation_bumps_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
            assert_eq!(store.capability_generation("bob").unwrap(), (0, true));
            assert_eq!(
                store.capability_generation("bob").unwrap(),
                (0, false),
                "stable"
            );
            assert_eq!(store.capability_generation("carol").unwrap(), (0, true));
            assert_eq!(store.revoke_capability("bob").unwrap(), Some(0));
            assert_eq!(
                store.revoke_capability("bob").unwrap(),
                None,
                "nothing left"
            );
            assert_eq!(store.revoke_capability("nobody").unwrap(), None);
            store.learn_capability(&[7; 32], &[8; 32]).unwrap();
            store.learn_capability(&[7; 32], &[9; 32]).unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        assert_eq!(
            store.capability_generation("bob").unwrap(),
            (1, true),
            "a new one"
        );
        let given = store.given_capabilities().unwrap();
        let g = |peer: &str, generation, revoked| GivenCapability {
            peer: peer.into(),
            generation,
            revoked,
        };
        assert_eq!(
            given,
            [g("bob", 0, true), g("bob", 1, false), g("carol", 0, false)]
        );
        assert_eq!(store.learned_capability(&[7; 32]).unwrap(), Some([9; 32]));
        assert_eq!(store.learned_capability(&[1; 32]).unwrap(), None);
    }

    #[tokio::test]
    async fn send_order_is_per_destination_continues_after_reopen_and_skips_failed_builds() {
        let dir = tempfile::tempdir().unwrap();
        let put = |store: &Store, to: [u8; 32], id: u8| {
            store
                .put_sequenced(&to, |n| {
                    let msg = OutgoingMessage {
                        id: [id; 16],
                        created_ms: 1,
                        destination: address(),
                        expires_ms: None,
                    };
                    Ok((msg, vec![frag(id, 0, 1)], n))
                })
                .unwrap()
                .2
        };
        {
            let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
            assert_eq!(put(&store, [1; 32], 1), 0);
            assert_eq!(put(&store, [1; 32], 2), 1);
            assert_eq!(put(&store, [2; 32], 3), 0);
            // A message that cannot be built takes no number.
            let failed = store.put_sequenced(&[1; 32], |_| -> Result<(_, _, ())> {
                Err(ClientError::Corrupt("test"))
            });
            assert!(failed.is_err());
            store.flush().await.unwrap();
        }
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        assert_eq!(put(&store, [1; 32], 4), 2);
        assert_eq!(put(&store, [2; 32], 5), 1);
        assert_eq!(store.outbox_len(), 5);
    }

    #[tokio::test]
    async fn an_answer_deadline_survives_reopen_and_an_older_store_gains_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let answer = OutgoingMessage {
            id: [3; 16],
            created_ms: 5,
            destination: address(),
            expires_ms: Some(65_000),
        };
        {
            let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
            store.put_outgoing(&answer, &[frag(3, 0, 1)]).unwrap();
            store.flush().await.unwrap();
        }
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        assert_eq!(store.load_outbox().unwrap()[0].0, answer);
        drop(store);
        // A store written before the column existed: the same rows, without it.
        {
            let db = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
            db.execute_batch("ALTER TABLE out_msgs DROP COLUMN expires_ms")
                .unwrap();
        }
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        let loaded = store.load_outbox().unwrap();
        assert_eq!(
            loaded[0].0.expires_ms, None,
            "an old message keeps its lifetime"
        );
        assert_eq!(loaded[0].0.id, answer.id);
    }

    #[tokio::test]
    async fn outbox_survives_reopen_and_empties_on_acks() {
        let dir = tempfile::tempdir().unwrap();
        let msg = OutgoingMessage {
            id: [9; 16],
            created_ms: 5,
            destination: address(),
            expires_ms: None,
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

    fn sqlite_error(code: std::ffi::c_int, message: &str) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(message.into()))
    }

    #[test]
    fn storage_errors_keep_the_database_message_and_say_their_kind() {
        let e = storage(sqlite_error(
            rusqlite::ffi::SQLITE_BUSY,
            "database is locked",
        ));
        let ClientError::Storage(stored) = &e else {
            panic!("not a storage error: {e:?}");
        };
        assert_eq!(stored.kind(), StorageErrorKind::Io);
        assert_eq!(
            e.to_string(),
            format!(
                "storage: {}",
                sqlite_error(rusqlite::ffi::SQLITE_BUSY, "database is locked")
            )
        );
        let ClientError::Storage(e) = storage(sqlite_error(rusqlite::ffi::SQLITE_NOTADB, "x"))
        else {
            panic!("not a storage error");
        };
        assert_eq!(e.kind(), StorageErrorKind::Corrupt);
        let ClientError::Storage(e) = storage(rusqlite::Error::InvalidQuery) else {
            panic!("not a storage error");
        };
        assert_eq!(e.kind(), StorageErrorKind::Other);
    }

    #[test]
    fn a_data_dir_opens_once_at_a_time_and_its_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        store.deliver(b"k", b"bundle", 0).unwrap();
        let Err(ClientError::Storage(e)) = Store::open(dir.path(), InboundLimits::default()) else {
            panic!("a second store opened the same data dir");
        };
        assert_eq!(
            e.kind(),
            StorageErrorKind::Io,
            "the transport retries on Io: {e}"
        );
        // The refused open did not release the first store's lock.
        assert!(Store::open(dir.path(), InboundLimits::default()).is_err());
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{:?}", entry.path());
        }
        drop(store);
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        assert_eq!(store.inbox_len(), 1, "reopens once the first is closed");
    }

    /// Every file under `dir` that holds `needle`.
    fn files_holding(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                std::fs::read(p)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
            })
            .collect()
    }

    #[test]
    fn removed_content_is_erased_from_every_file_at_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        let secret = b"a payload that must not outlive its ack";
        let mut fragment = frag(7, 0, 1);
        fragment.data = secret.repeat(20);
        let msg = OutgoingMessage {
            id: [7; 16],
            created_ms: 1,
            destination: address(),
            expires_ms: None,
        };
        store.put_outgoing(&msg, &[fragment.clone()]).unwrap();
        let mut partial = frag(8, 0, 2);
        partial.data = secret.repeat(20);
        store.put_fragment(&partial, 0).unwrap();
        let id = store.deliver(b"k", &secret.repeat(20), 0).unwrap().unwrap();
        store.flush_blocking().unwrap();
        assert!(!files_holding(dir.path(), secret).is_empty());

        assert!(store.ack_fragment(&msg.id, 0).unwrap());
        store.finish_message(&partial.message_id, 0).unwrap();
        assert!(store.inbox_remove(id).unwrap());
        store.flush_blocking().unwrap();
        assert_eq!(
            files_holding(dir.path(), secret),
            Vec::<std::path::PathBuf>::new()
        );
        drop(store);
        assert_eq!(
            files_holding(dir.path(), secret),
            Vec::<std::path::PathBuf>::new()
        );
    }

    #[test]
    fn inbound_ids_are_not_reused_after_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), InboundLimits::default()).unwrap();
        let first = store.deliver(b"a", b"1", 0).unwrap().unwrap();
        assert!(store.inbox_remove(first).unwrap());
        let second = store.deliver(b"b", b"2", 0).unwrap().unwrap();
        assert!(second > first);
        assert_eq!(
            store.inbox_after(Some(first)).unwrap(),
            Some((second, b"2".to_vec()))
        );
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
