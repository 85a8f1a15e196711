//! Packet building off the driver's task.
//!
//! Building a packet is a dozen X25519 multiplications (a five-hop forward header, and for a
//! real fragment its four-hop SURB-ack): hundreds of microseconds, most of a client's CPU.
//! Done on the driver's task it delays the next send and caps a client at one core's build
//! rate. [`BuildPool`] runs a few threads that build the [`Job`]s the sender hands out (real
//! fragments and a small stock of drop cover) ahead of time into bounded queues, so the
//! Poisson emitter only pops a ready packet at the instant the schedule chose. What is built
//! does not depend on when it is sent (delays are relative to each hop's arrival), so building
//! early changes nothing on the wire.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use spore_protocol::packet::SurbRecovery;
use tokio::sync::mpsc;

use crate::sender::{Built, Job};
use crate::shared::Shared;

/// Build threads fed by a bounded job queue; results come back on a bounded channel the
/// driver selects on. Dropping the pool stops the threads (their job queue closes). How many
/// jobs are out is the sender's to count ([`crate::sender::Sender::poll_build`]).
pub(crate) struct BuildPool {
    jobs: std_mpsc::SyncSender<Job>,
    pub results: mpsc::Receiver<Built<SurbRecovery>>,
}

impl BuildPool {
    /// Starts `threads` build threads with room for `capacity` jobs in flight; `None` if no
    /// thread could be started (the sender then builds at the payload tick).
    pub fn start(shared: &Arc<Shared>, threads: usize, capacity: usize) -> Option<Self> {
        let capacity = capacity.max(1);
        let (jobs, job_rx) = std_mpsc::sync_channel::<Job>(capacity);
        let (result_tx, results) = mpsc::channel(capacity);
        let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
        let mut started = 0;
        for i in 0..threads {
            let shared = shared.clone();
            let job_rx = job_rx.clone();
            let result_tx = result_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("spore-build-{i}"))
                .spawn(move || build_loop(&shared, &job_rx, &result_tx));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "cannot start a packet build thread"),
            }
        }
        (started > 0).then_some(Self { jobs, results })
    }

    /// Hands out a job; gives it back if the queue is full or the threads are gone.
    pub fn submit(&mut self, job: Job) -> Result<(), Job> {
        self.jobs.try_send(job).map_err(|e| match e {
            std_mpsc::TrySendError::Full(job) | std_mpsc::TrySendError::Disconnected(job) => job,
        })
    }
}

fn build_loop(
    shared: &Shared,
    jobs: &std::sync::Mutex<std_mpsc::Receiver<Job>>,
    results: &mpsc::Sender<Built<SurbRecovery>>,
) {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    loop {
        // One thread waits on the queue at a time; the lock is released before building.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return; // the driver is gone
        };
        let dir = shared.directory.current();
        let factory = shared.factory(&dir);
        let built = match job {
            Job::Fragment(f) => Built::Fragment {
                packet: factory.fragment(&mut rng, &f.destination, f.key.2, &f.bytes),
                key: f.key,
                at: Instant::now(),
            },
            Job::DropCover => Built::DropCover {
                packet: factory.drop_cover(&mut rng),
                at: Instant::now(),
            },
        };
        if results.blocking_send(built).is_err() {
            return;
        }
    }
}
