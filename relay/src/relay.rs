//! Assembling a relay from its parts, and the handle a caller gets back.
//!
//! [`Relay::start_with_clock`] reads as the list of parts, in the order they must start:
//! storage, directory, mix (workers, commit, forwarding, links), mailbox, maintenance, listener,
//! metrics endpoint, loop cover, descriptor file. Each part is one method of `Parts`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use spore_protocol::packet::PacketLimits;
use spore_protocol::params::PACKET_SIZE;
use spore_protocol::{Error as ProtocolError, MailboxId, PeerMisbehaved, RelayId};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::clock::{Clock, SystemClock};
use crate::config::RelayConfig;
use crate::directory::{DirectorySource, DirectoryView, Trust};
use crate::error::{RelayError, Result};
use crate::forward::{Egress, Forwarder, ReleaseGate};
use crate::handler::{LinkSettings, Shared};
use crate::ingress::{self, PacketIngress};
use crate::keys::{KeySchedule, RelayKeys};
use crate::link_pool::{LinkPool, PoolSettings};
use crate::listener::Listener;
use crate::mailbox::{self, MailboxService};
use crate::metrics::{Metrics, MetricsSnapshot, RelayDescription};
use crate::mix::{self, MixContext};
use crate::replay::ReplayCache;
use crate::shutdown::Shutdown;
use crate::store::{Database, MailboxLimits, MailboxStore};

/// Starts relays. See [`RunningRelay`] for what a started relay offers.
///
/// ```no_run
/// # async fn f() -> Result<(), spore_relay::RelayError> {
/// use spore_relay::{DirectorySource, Relay, RelayConfig, RelayKeys};
/// let dir = std::path::Path::new("/tmp/relay-a");
/// let relay = Relay::start(RelayConfig::for_test(dir), RelayKeys::generate(), DirectorySource::None).await?;
/// println!("listening on {}", relay.local_addr());
/// relay.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Opens the database, binds the listener and starts every task, with the system clock.
    pub async fn start(
        config: RelayConfig,
        keys: RelayKeys,
        directory: DirectorySource,
    ) -> Result<RunningRelay> {
        Self::start_with_clock(config, keys, directory, Arc::new(SystemClock)).await
    }

    /// Like [`Relay::start`], with an injected clock (epochs, retention, descriptors, and the
    /// monotonic time delays are measured in).
    pub async fn start_with_clock(
        config: RelayConfig,
        keys: RelayKeys,
        directory: DirectorySource,
        clock: Arc<dyn Clock>,
    ) -> Result<RunningRelay> {
        config.validate()?;
        // Bind first: a busy port fails before anything is opened or started.
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| RelayError::Bind {
                    what: "listen",
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::new());
        metrics.use_clock(clock.clone());
        metrics.describe(describe(&config, local_addr, &directory));
        let parts = Parts {
            schedule: KeySchedule {
                epoch_length_secs: config.mix.epoch_length_secs,
                grace_secs: config.mix.grace_secs,
            },
            config,
            keys,
            clock,
            metrics,
            shutdown: Shutdown::new(),
        };
        let storage = parts.open_storage().await?;
        let stop = Arc::new(AtomicBool::new(false));
        // If anything below fails, stop what was already started (and so close the database).
        let mut guard = StartGuard {
            shutdown: parts.shutdown.clone(),
            stop: stop.clone(),
            armed: true,
        };
        let (directory, refusals) = parts.start_directory(directory).await?;
        let mix = parts.start_mix(&storage, &directory, &stop)?;
        let mailbox = parts.start_mailbox(&storage);
        parts.spawn_maintenance(&directory, &storage.replay, refusals);
        parts.spawn_listener(listener, &mix.ingress, &directory, &mailbox);
        let metrics_addr = match parts.config.metrics_listen {
            Some(addr) => Some(
                crate::metrics::serve(addr, parts.metrics.clone(), parts.shutdown.clone()).await?,
            ),
            None => None,
        };
        parts.spawn_cover(&directory, &mix.egress, &mix.loops, &mix.quarantine);
        parts.start_descriptor_file(local_addr).await?;
        crate::publish::spawn(
            &parts.config,
            &parts.keys,
            local_addr,
            &directory,
            parts.clock.clone(),
            &parts.shutdown,
        );

        let Parts {
            config,
            keys,
            clock,
            metrics,
            shutdown,
            ..
        } = parts;
        let health = metrics.health();
        tracing::info!(
            id = %keys.relay_id().short(),
            version = env!("CARGO_PKG_VERSION"),
            roles = %health.relay.roles.join(","),
            listen = %local_addr,
            public_address = %health.relay.public_address,
            metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            directory = %health.relay.directory_source,
            listed = health.listed,
            workers = config.worker_count(),
            "relay started"
        );
        guard.armed = false;
        Ok(RunningRelay {
            local_addr,
            metrics_addr,
            config,
            keys,
            clock,
            metrics,
            directory,
            mailbox,
            ingress: Some(mix.ingress),
            db: Some(storage.db),
            shutdown,
            stop,
            gate: mix.gate,
            workers: mix.workers,
            committer: Some(mix.committer),
            delay_thread: Some(mix.delay_thread),
        })
    }
}

/// What every part of a relay is started from.
struct Parts {
    config: RelayConfig,
    keys: RelayKeys,
    schedule: KeySchedule,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

/// The relay's files: the database, the replay log and (mailbox role) the mailbox store.
struct Storage {
    db: Database,
    replay: Arc<ReplayCache>,
    store: Option<Arc<MailboxStore>>,
}

/// The running mix pipeline: its entry, its exit and its threads.
struct Mix {
    ingress: PacketIngress,
    egress: Arc<Egress>,
    gate: Arc<ReleaseGate>,
    workers: Vec<std::thread::JoinHandle<()>>,
    committer: std::thread::JoinHandle<()>,
    delay_thread: std::thread::JoinHandle<()>,
    /// This relay's loops in flight (loop cover and decoys), for the loop-loss alarm.
    loops: Arc<crate::loop_monitor::LoopMonitor>,
    /// Next hops whose link just failed, which this relay's own routes avoid.
    quarantine: Arc<crate::quarantine::HopQuarantine>,
}

impl Parts {
    /// Opens the database, the replay log and the mailbox store (off the async threads).
    async fn open_storage(&self) -> Result<Storage> {
        let config = &self.config;
        let oldest_epoch = self.schedule.oldest_kept_epoch(self.clock.now_unix());
        let data_dir = config.data_dir.clone();
        let limits = config.roles.mailbox.then_some(MailboxLimits {
            quota_items: config.mailbox.quota_items,
            quota_bytes: config.mailbox.quota_bytes,
            disk_budget_bytes: config.mailbox.disk_budget_bytes,
            first_contact_items: config.mailbox.first_contact_quota_items,
            first_contact_bytes: config.mailbox.first_contact_quota_bytes,
        });
        let (keys, schedule, now) = (self.keys.clone(), self.schedule, self.clock.now_unix());
        let storage = tokio::task::spawn_blocking(move || -> Result<_> {
            let db = Database::open(&data_dir)?;
            let replay = Arc::new(ReplayCache::open(&data_dir.join("replay"), oldest_epoch)?);
            crate::epoch_keys::rotate(&keys, &schedule, &replay, now)?;
            let store = match limits {
                Some(l) => Some(Arc::new(MailboxStore::open(&db, l)?)),
                None => None,
            };
            Ok(Storage { db, replay, store })
        })
        .await
        .map_err(|_| RelayError::Corrupt("database open panicked"))??;
        if storage.replay.floor() > self.schedule.epoch_at(self.clock.now_unix()) {
            tracing::warn!(
                floor = storage.replay.floor(),
                "the clock is behind the last expired key epoch: packets are refused until it \
                 catches up (was the clock wrong before?)"
            );
        }
        Ok(storage)
    }

    /// The directory view, with a first read of the source (a relay starts without one).
    /// Also returns the refusal log, which knows whether that first read failed (so the
    /// maintenance task does not log the same refusal again).
    async fn start_directory(
        &self,
        source: DirectorySource,
    ) -> Result<(Arc<DirectoryView>, RefusalLog)> {
        let config = &self.config;
        let trust = Trust::from_hex(&config.directory.authorities, config.directory.threshold)?;
        if trust.threshold == 0 {
            tracing::warn!("directory signatures are not checked (threshold 0): testing only");
        }
        let mut refusals = RefusalLog {
            last_error: None,
            now: self.clock.clone(),
            source: source.clone(),
            authorities: trust.authorities.clone(),
        };
        let cache = (config.directory.cache_path.clone())
            .unwrap_or_else(|| config.data_dir.join("directory.bin"));
        let directory = Arc::new(
            DirectoryView::new(source, trust, self.clock.clone())
                .expect_epoch_length(config.mix.epoch_length_secs)
                .cache_in(cache),
        );
        let first = directory.refresh().await;
        if let Err(e) = &first {
            count_refused_directory(&self.metrics, e);
        }
        refusals.observe(&first).await;
        record_directory(&self.metrics, &directory, &self.keys.relay_id());
        Ok((directory, refusals))
    }

    /// The unwrap queue, the Sphinx workers, the commit thread, the forwarder with its delay
    /// thread, and the link pool they send through.
    fn start_mix(
        &self,
        storage: &Storage,
        directory: &Arc<DirectoryView>,
        stop: &Arc<AtomicBool>,
    ) -> Result<Mix> {
        let config = &self.config;
        let (ingress, unwrap_rx) = ingress::unwrap_queue(
            config.limits.unwrap_queue,
            self.clock.clone(),
            self.metrics.clone(),
        );
        let quarantine = Arc::new(crate::quarantine::HopQuarantine::default());
        let pool = LinkPool::new(
            *self.keys.link_secret(),
            directory.clone(),
            PoolSettings {
                queue: config.limits.link_queue,
                connect_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
                max_late: config.max_delay(),
            },
            quarantine.clone(),
            self.clock.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
        );
        let egress = Egress::new(
            self.keys.relay_id(),
            ingress.clone(),
            Box::new(pool),
            self.metrics.clone(),
        );
        let (forwarder, delay_thread, gate) = Forwarder::start(
            egress.clone(),
            config.limits.delay_queue,
            Some(crate::held_packets::path_in(&config.data_dir)),
            self.clock.clone(),
            self.metrics.clone(),
        )?;
        let loops = Arc::new(crate::loop_monitor::LoopMonitor::default());
        let ctx = Arc::new(MixContext {
            keys: self.keys.clone(),
            schedule: self.schedule,
            limits: PacketLimits {
                max_delay: config.max_delay(),
                ..PacketLimits::default()
            },
            replay: storage.replay.clone(),
            mailbox: storage.store.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            directory: directory.clone(),
            loops: loops.clone(),
            quarantine: quarantine.clone(),
        });
        let (commit_tx, commit_rx) = std::sync::mpsc::sync_channel(1024);
        let committer = mix::spawn_committer(
            storage.db.clone(),
            storage.replay.clone(),
            commit_rx,
            forwarder,
            self.clock.clone(),
            self.metrics.clone(),
        )?;
        let workers = mix::spawn_workers(
            config.worker_count(),
            ctx,
            unwrap_rx,
            commit_tx,
            stop.clone(),
        )?;
        Ok(Mix {
            ingress,
            egress,
            gate,
            workers,
            committer,
            delay_thread,
            loops,
            quarantine,
        })
    }

    /// The mailbox role's link side and its retention sweeper.
    fn start_mailbox(&self, storage: &Storage) -> Option<MailboxService> {
        let store = storage.store.clone()?;
        let service = MailboxService::new(store, storage.db.clone(), self.metrics.clone());
        self.shutdown.spawn(mailbox::run_sweeper(
            service.clone(),
            self.clock.clone(),
            Duration::from_secs(self.config.mailbox.retention_secs),
            Duration::from_secs(self.config.mailbox.sweep_interval_secs),
            self.shutdown.clone(),
        ));
        Some(service)
    }

    /// Directory refresh (its own loop: about every `directory.refresh_secs`, jittered, sooner
    /// near expiry), replay-cache expiry and epoch-key rotation, every `directory.refresh_secs`.
    fn spawn_maintenance(
        &self,
        directory: &Arc<DirectoryView>,
        replay: &Arc<ReplayCache>,
        refusals: RefusalLog,
    ) {
        let directory = directory.clone();
        let replay = replay.clone();
        let keys = self.keys.clone();
        let clock = self.clock.clone();
        let metrics = self.metrics.clone();
        metrics.set_replay_tags(replay.len());
        let shutdown = self.shutdown.clone();
        let schedule = self.schedule;
        let every = Duration::from_secs(self.config.directory.refresh_secs.max(1));
        let relay_id = self.keys.relay_id();
        self.shutdown.spawn(refresh_loop(
            directory.clone(),
            every,
            metrics.clone(),
            shutdown.clone(),
            refusals,
            relay_id,
        ));
        self.shutdown.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.signalled() => break,
                    _ = tick.tick() => {}
                }
                record_directory(&metrics, &directory, &relay_id);
                let now = clock.now_unix();
                let oldest = schedule.oldest_kept_epoch(now);
                let (replay2, keys2) = (replay.clone(), keys.clone());
                let expired = tokio::task::spawn_blocking(move || {
                    let n = replay2.expire_before(oldest)?;
                    crate::epoch_keys::rotate(&keys2, &schedule, &replay2, now).map(|_| n)
                })
                .await;
                metrics.set_replay_tags(replay.len());
                match expired {
                    Ok(Ok(n)) if n > 0 => {
                        tracing::info!(epochs = n, "dropped expired replay caches")
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "replay or key expiry failed"),
                    _ => {}
                }
            }
        });
    }

    /// The accept loop, with what every link handler shares.
    fn spawn_listener(
        &self,
        listener: TcpListener,
        ingress: &PacketIngress,
        directory: &Arc<DirectoryView>,
        mailbox: &Option<MailboxService>,
    ) {
        let config = &self.config;
        let shared = Arc::new(Shared {
            link_secret: *self.keys.link_secret(),
            ingress: ingress.clone(),
            packets_from_anyone: config.roles.entry,
            relays_only: !config.roles.entry && !config.roles.mailbox,
            admission: crate::admission::Admission::new(
                config.limits.max_connections,
                crate::admission::RELAY_SLOTS,
            ),
            directory: directory.clone(),
            mailbox: mailbox.clone(),
            metrics: self.metrics.clone(),
            settings: LinkSettings {
                handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
                idle_timeout: Duration::from_secs(config.limits.idle_timeout_secs),
                packets_per_sec: config.limits.packets_per_sec,
                packet_burst: config.limits.packet_burst,
                reply_queue: config.limits.reply_queue,
            },
        });
        self.shutdown.spawn(
            Listener {
                listener,
                limit: Arc::new(Semaphore::new(config.limits.max_connections)),
                per_prefix: Arc::default(),
                // Counted per /24 (IPv4) or /64 (IPv6) prefix.
                max_per_prefix: config.limits.max_connections_per_ip,
                shared,
                shutdown: self.shutdown.clone(),
            }
            .run(),
        );
    }

    /// Loop cover at the directory's λ_M (`mix.loop_rate` can only raise it), and its alarm.
    fn spawn_cover(
        &self,
        directory: &Arc<DirectoryView>,
        egress: &Arc<Egress>,
        loops: &Arc<crate::loop_monitor::LoopMonitor>,
        quarantine: &Arc<crate::quarantine::HopQuarantine>,
    ) {
        crate::cover::spawn(
            crate::cover::CoverSettings {
                rate: self.config.mix.loop_rate,
                schedule: self.schedule,
                max_delay: self.config.max_delay(),
            },
            self.keys.clone(),
            directory.clone(),
            egress.clone(),
            self.clock.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
            loops.clone(),
            quarantine.clone(),
        );
    }

    /// The descriptor file, if configured: written once now, then every half epoch.
    async fn start_descriptor_file(&self, local_addr: SocketAddr) -> Result<()> {
        let Some(path) = self.config.descriptor_file.clone() else {
            return Ok(());
        };
        let config = self.config.clone();
        let keys = self.keys.clone();
        let clock = self.clock.clone();
        let address = config.advertised_address(local_addr);
        let every = Duration::from_secs((config.mix.epoch_length_secs / 2).max(1));
        let task_shutdown = self.shutdown.clone();
        // Written once before start returns, so the file is there when the caller looks.
        write_descriptor(&path, &config, &keys, &address, clock.now_unix()).await?;
        self.shutdown.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = task_shutdown.signalled() => break,
                    _ = tick.tick() => {}
                }
                if let Err(e) =
                    write_descriptor(&path, &config, &keys, &address, clock.now_unix()).await
                {
                    tracing::error!(error = %e, "could not write the descriptor file");
                }
            }
        });
        Ok(())
    }
}

/// Writes the signed descriptor atomically (temporary file, then rename).
async fn write_descriptor(
    path: &std::path::Path,
    config: &RelayConfig,
    keys: &RelayKeys,
    address: &str,
    now_unix: u64,
) -> Result<()> {
    let d = crate::descriptor::build(config, keys, address, now_unix)?;
    let tmp = path.with_extension("tmp");
    let err = |source| RelayError::File {
        path: path.to_owned(),
        source,
    };
    tokio::fs::write(&tmp, d.to_bytes()).await.map_err(err)?;
    tokio::fs::rename(&tmp, path).await.map_err(err)?;
    Ok(())
}

/// Stops a half-started relay when `Relay::start` returns an error.
struct StartGuard {
    shutdown: Shutdown,
    stop: Arc<AtomicBool>,
    armed: bool,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shutdown.trigger();
            self.stop.store(true, Ordering::Release);
        }
    }
}

/// A started relay. Dropping it stops it without waiting; prefer [`RunningRelay::shutdown`].
pub struct RunningRelay {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    config: RelayConfig,
    keys: RelayKeys,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    directory: Arc<DirectoryView>,
    mailbox: Option<MailboxService>,
    ingress: Option<PacketIngress>,
    db: Option<Database>,
    shutdown: Shutdown,
    stop: Arc<AtomicBool>,
    /// Closed first on a graceful stop: what the delay queue holds then is kept for the next
    /// start instead of racing the links' close.
    gate: Arc<ReleaseGate>,
    workers: Vec<std::thread::JoinHandle<()>>,
    committer: Option<std::thread::JoinHandle<()>>,
    delay_thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RunningRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningRelay")
            .field("id", &self.keys.relay_id())
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl RunningRelay {
    /// The bound listen address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound metrics address, if the endpoint is enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn id(&self) -> RelayId {
        self.keys.relay_id()
    }

    pub fn keys(&self) -> &RelayKeys {
        &self.keys
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The Noise static public key clients and relays pin.
    pub fn link_public(&self) -> [u8; 32] {
        self.keys.link_public()
    }

    /// The Sphinx key epoch now (by the relay's clock).
    pub fn current_epoch(&self) -> u64 {
        self.clock.now_unix() / self.config.mix.epoch_length_secs.max(1)
    }

    /// The Sphinx public key for `epoch`.
    pub fn sphinx_public(&self, epoch: u64) -> x25519_dalek::PublicKey {
        self.keys.sphinx_public(epoch)
    }

    /// Counters, gauges and drop reasons right now.
    pub fn metrics(&self) -> MetricsSnapshot {
        if let Some(m) = &self.mailbox {
            m.refresh_gauges();
        }
        self.metrics.snapshot()
    }

    /// What `GET /health` serves (and `spore-relay status` prints).
    pub fn health(&self) -> crate::metrics::Health {
        if let Some(m) = &self.mailbox {
            m.refresh_gauges();
        }
        self.metrics.health()
    }

    /// The Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// (items, payload bytes) stored for `mailbox` (mailbox role only).
    pub fn mailbox_usage(&self, mailbox: &MailboxId) -> (u64, u64) {
        self.mailbox
            .as_ref()
            .map(|m| m.store().mailbox_usage(mailbox))
            .unwrap_or((0, 0))
    }

    /// Runs the retention sweeper now; returns how many items expired.
    pub async fn sweep_now(&self) -> Result<u64> {
        let Some(m) = self.mailbox.clone() else {
            return Ok(0);
        };
        let now = self.clock.now_unix();
        let retention = Duration::from_secs(self.config.mailbox.retention_secs);
        tokio::task::spawn_blocking(move || m.sweep(now, retention))
            .await
            .map_err(|_| RelayError::ShuttingDown)?
    }

    /// Re-reads the directory source now; returns whether a new directory was installed.
    pub async fn refresh_directory(&self) -> Result<bool> {
        let result = self.directory.refresh().await;
        if let Err(e) = &result {
            count_refused_directory(&self.metrics, e);
        }
        record_directory(&self.metrics, &self.directory, &self.keys.relay_id());
        result
    }

    /// Feeds a packet to the workers as if it had arrived on a link.
    pub fn inject_packet(&self, packet: Box<[u8; PACKET_SIZE]>) {
        if let Some(i) = &self.ingress {
            i.submit(packet);
        }
    }

    /// The signed descriptor to submit to the directory authorities, valid from now for
    /// `descriptor_lifetime_secs`, publishing the current and next Sphinx keys.
    pub fn descriptor(&self) -> Result<spore_protocol::directory::RelayDescriptor> {
        crate::descriptor::build(
            &self.config,
            &self.keys,
            &self.config.advertised_address(self.local_addr),
            self.clock.now_unix(),
        )
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<()> {
        crate::shutdown::os_signal().await;
        tracing::info!("signal received, shutting down");
        self.shutdown().await
    }

    /// Stops releasing delayed packets, stops accepting, closes links (after they flushed what
    /// they were given), lets the workers finish what they hold, commits the database, keeps
    /// the delay queue's packets for the next start, and returns once the database is closed
    /// (so it can be reopened at once).
    pub async fn shutdown(mut self) -> Result<()> {
        let gate = self.gate.clone();
        tokio::task::spawn_blocking(move || gate.close())
            .await
            .map_err(|_| RelayError::ShuttingDown)?;
        self.shutdown.trigger();
        if tokio::time::timeout(Duration::from_secs(10), self.shutdown.wait_tasks())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 10 s");
        }
        self.ingress = None;
        self.stop.store(true, Ordering::Release);
        let workers = std::mem::take(&mut self.workers);
        let committer = self.committer.take();
        let delay_thread = self.delay_thread.take();
        let db = self.db.take();
        self.mailbox = None;
        tokio::task::spawn_blocking(move || -> Result<()> {
            for w in workers {
                let _ = w.join();
            }
            if let Some(c) = committer {
                let _ = c.join();
            }
            if let Some(d) = delay_thread {
                let _ = d.join();
            }
            if let Some(db) = db {
                db.commit()?;
            }
            Ok(())
        })
        .await
        .map_err(|_| RelayError::ShuttingDown)??;
        tracing::info!("relay stopped");
        Ok(())
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.shutdown.trigger();
        self.stop.store(true, Ordering::Release);
    }
}

/// Counts a refused directory under `directory_<reason>` (forged, expired, malformed). A source
/// that could not be read is not a refusal and is not counted.
pub(crate) fn count_refused_directory(metrics: &Metrics, e: &RelayError) {
    if let RelayError::Protocol(p) = e {
        metrics.dropped(match p {
            ProtocolError::PeerMisbehaved(PeerMisbehaved::NotEnoughSignatures { .. }) => {
                "directory_not_enough_signatures"
            }
            ProtocolError::PeerMisbehaved(PeerMisbehaved::BadSignature) => {
                "directory_bad_signature"
            }
            ProtocolError::PeerMisbehaved(PeerMisbehaved::Expired) => "directory_expired",
            ProtocolError::PeerMisbehaved(PeerMisbehaved::DuplicateRelay) => {
                "directory_duplicate_relay"
            }
            _ => "directory_malformed",
        });
    }
}

/// The fixed facts `/health` and the start-up line report.
fn describe(
    config: &RelayConfig,
    local_addr: SocketAddr,
    source: &DirectorySource,
) -> RelayDescription {
    let roles = &config.roles;
    let mut names = Vec::new();
    if roles.entry {
        names.push("entry".to_owned());
    }
    if roles.mix {
        names.push(format!("mix (layer {})", config.layer));
    }
    if roles.mailbox {
        names.push("mailbox".to_owned());
    }
    let directory_source = match source {
        DirectorySource::File(p) => format!("file {}", p.display()),
        DirectorySource::Http(u) => format!("url {u}"),
        DirectorySource::None => "none".to_owned(),
        DirectorySource::Memory(_) => "in memory".to_owned(),
        _ => "other".to_owned(),
    };
    RelayDescription {
        roles: names,
        listen: local_addr.to_string(),
        public_address: config.advertised_address(local_addr),
        directory_configured: !matches!(source, DirectorySource::None),
        directory_source,
        unwrap_queue_limit: config.limits.unwrap_queue,
        delay_queue_limit: config.limits.delay_queue,
        link_queue_limit: config.limits.link_queue,
        mailbox: roles.mailbox,
        disk_budget_bytes: config.mailbox.disk_budget_bytes,
        loop_rate: config.mix.loop_rate,
    }
}

/// Tells the metrics which directory is in force and whether it lists this relay.
/// The directory's own refresh loop: about every `every`, jittered, sooner near expiry. Each
/// outcome is counted, logged once per change ([`RefusalLog`]) and exported as metrics.
async fn refresh_loop(
    directory: Arc<DirectoryView>,
    every: Duration,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    mut refusals: RefusalLog,
    relay_id: RelayId,
) {
    loop {
        let until = directory.current().map(|v| v.valid_until);
        let wait = spore_directory_fetch::next_refresh(every, until, directory.now_unix());
        tokio::select! {
            _ = shutdown.signalled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let refreshed = directory.refresh().await;
        if let Err(e) = &refreshed {
            count_refused_directory(&metrics, e);
        }
        refusals.observe(&refreshed).await;
        record_directory(&metrics, &directory, &relay_id);
    }
}

fn record_directory(metrics: &Metrics, directory: &DirectoryView, id: &RelayId) {
    let view = directory.current();
    metrics.set_directory(
        view.as_ref().map(|v| (v.valid_after, v.valid_until)),
        view.as_ref()
            .and_then(|v| v.relays.get(id))
            .map(|r| (r.published_at, r.expires_at)),
    );
}

/// Logs a refused or unreadable directory once per change of state, not at every refresh:
/// the first failure (and a different error) at warn, the return to a good directory at info.
struct RefusalLog {
    last_error: Option<String>,
    /// Wall time, for "not valid now" (the relay's clock).
    now: Arc<dyn Clock>,
    /// Re-read on a signature or validity refusal, to say which authority did not sign and
    /// when the document is valid.
    source: DirectorySource,
    authorities: Vec<[u8; 32]>,
}

impl RefusalLog {
    async fn observe(&mut self, result: &Result<bool>) {
        match result {
            Err(e) => {
                let text = directory_refusal(e, &self.now);
                if self.last_error.as_deref() != Some(text.as_str()) {
                    let document = match e {
                        RelayError::Protocol(ProtocolError::PeerMisbehaved(_)) => {
                            refused_document(&self.source, &self.authorities).await
                        }
                        _ => None,
                    };
                    tracing::warn!(
                        error = %text,
                        document = document.as_deref().unwrap_or("-"),
                        "directory source refused; keeping the directory in force, if any \
                         (logged again only when the reason changes)"
                    );
                    self.last_error = Some(text);
                }
            }
            Ok(_) => {
                if self.last_error.take().is_some() {
                    tracing::info!("directory source usable again");
                }
            }
        }
    }
}

/// Why a directory was refused, in an operator's words: a directory comes from the operator's
/// own file or URL, so its faults are not called a peer's misbehaviour, and each says what to
/// check.
fn directory_refusal(e: &RelayError, clock: &Arc<dyn Clock>) -> String {
    match e {
        RelayError::Protocol(ProtocolError::PeerMisbehaved(p)) => match p {
            PeerMisbehaved::NotEnoughSignatures { valid, needed } => format!(
                "refused: only {valid} of the {needed} required signatures (directory.threshold) \
                 are by keys in directory.authorities; check those keys against the authorities' \
                 (`spore directory show` prints them in full)"
            ),
            PeerMisbehaved::Expired => format!(
                "refused: the directory is not valid now ({}); the authorities have not \
                 published a fresh one, or this host's clock is wrong",
                crate::error::UtcTime(clock.now_unix())
            ),
            PeerMisbehaved::BadSignature => {
                "refused: an authority signature does not verify (damaged or forged document)"
                    .to_owned()
            }
            other => format!("refused: {other}"),
        },
        RelayError::Protocol(ProtocolError::InvalidMessage(m)) => {
            format!(
                "refused: not a directory document ({m}); is the source the binary directory, not hex?"
            )
        }
        other => format!("could not be read: {other}"),
    }
}

/// What a refused directory document says about itself: its validity window in UTC, which of
/// `directory.authorities` did not sign it, and signatures by keys not in that list. `None` when
/// the source cannot be re-read or parsed.
async fn refused_document(source: &DirectorySource, authorities: &[[u8; 32]]) -> Option<String> {
    let bytes = source.fetch().await.ok()??;
    let doc = spore_protocol::directory::Directory::from_bytes(&bytes).ok()?;
    let signers: Vec<[u8; 32]> = doc.signatures.iter().map(|s| s.authority).collect();
    let mut text = format!(
        "valid from {} to {}",
        crate::error::UtcTime(doc.valid_after),
        crate::error::UtcTime(doc.valid_until)
    );
    let missing: Vec<String> = authorities
        .iter()
        .enumerate()
        .filter(|(_, k)| !signers.contains(k))
        .map(|(i, k)| format!("directory.authorities[{i}] = {}", hex::encode(k)))
        .collect();
    if !missing.is_empty() {
        text.push_str("; no signature by ");
        text.push_str(&missing.join(", "));
    }
    let unknown: Vec<String> = signers
        .iter()
        .filter(|k| !authorities.contains(k))
        .map(hex::encode)
        .collect();
    if !unknown.is_empty() {
        text.push_str("; signed by keys not in directory.authorities: ");
        text.push_str(&unknown.join(", "));
    }
    Some(text)
}
