//! The inbound half of the sidecar: every request the transport receives goes to the
//! homeserver through [`deliver_inbound`], one queue per origin.
//!
//! Per origin, requests are delivered in order, one at a time, each retried with its own
//! backoff while the failure is transient; a transaction the homeserver refuses for good
//! goes to the [`DeadLetters`] store after a bounded number of refusals and is acked only once
//! it is there. One origin's refusals or slow answers therefore never hold up another origin's
//! deliveries, and nothing is lost across a crash: a request leaves the transport's inbox only
//! when delivered, answered, expired or durably dead-lettered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use spore_client::{ClientError, InboundRequest, Transport};
use tokio::sync::{mpsc, watch};

use crate::dead_letter::DeadLetters;
use crate::homeserver::{
    Delivered, DeliveryError, LocalHomeserver, RetryPolicy, deliver_inbound, too_large_response,
};
use crate::server_keys::ServerKeyCache;

/// An origin's queue with nothing in it for this long ends its task (a new one starts with
/// the origin's next request).
const IDLE_WORKER: Duration = Duration::from_secs(60);

/// Counters of the inbound path (what an operator's metrics read).
#[derive(Debug, Default)]
pub struct InboundCounters {
    dead_lettered: AtomicU64,
}

impl InboundCounters {
    /// Transactions written to the dead-letter store since start.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
}

/// What every origin's task shares.
struct Delivery {
    transport: Transport,
    homeserver: LocalHomeserver,
    keys: Arc<ServerKeyCache>,
    dead_letters: DeadLetters,
    policy: RetryPolicy,
    counters: Arc<InboundCounters>,
}

/// Reads the inbox and hands each request to its origin's queue, starting that origin's task
/// when it has none.
pub(crate) async fn deliver_inbox(
    transport: Transport,
    homeserver: LocalHomeserver,
    keys: Arc<ServerKeyCache>,
    dead_letters: DeadLetters,
    policy: RetryPolicy,
    counters: Arc<InboundCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let delivery = Arc::new(Delivery {
        transport: transport.clone(),
        homeserver,
        keys,
        dead_letters,
        policy,
        counters,
    });
    let mut queues: HashMap<String, mpsc::UnboundedSender<InboundRequest>> = HashMap::new();
    loop {
        let inbound = tokio::select! {
            () = stopped(&mut stop) => return,
            r = transport.incoming() => match r {
                Ok(i) => i,
                Err(ClientError::Stopped) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the inbox");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        queues.retain(|_, q| !q.is_closed());
        let origin = inbound.origin.clone();
        // A closed queue (its task went idle) hands the request back: start a new task.
        let inbound = match queues.get(&origin) {
            Some(queue) => match queue.send(inbound) {
                Ok(()) => continue,
                Err(mpsc::error::SendError(inbound)) => inbound,
            },
            None => inbound,
        };
        let (queue, requests) = mpsc::unbounded_channel();
        let _ = queue.send(inbound);
        queues.insert(origin, queue);
        tokio::spawn(deliver_origin(delivery.clone(), requests, stop.clone()));
    }
}

/// One origin's task: its requests in order, until its queue stays empty for [`IDLE_WORKER`].
async fn deliver_origin(
    delivery: Arc<Delivery>,
    mut requests: mpsc::UnboundedReceiver<InboundRequest>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            () = stopped(&mut stop) => return,
            r = tokio::time::timeout(IDLE_WORKER, requests.recv()) => r,
        };
        let inbound = match next {
            Ok(Some(inbound)) => inbound,
            Ok(None) => return,
            Err(_) => {
                // Closing first means no request can be queued and then lost: what arrived
                // before the close is still delivered here, anything later starts a new task.
                requests.close();
                match requests.try_recv() {
                    Ok(inbound) => inbound,
                    Err(_) => return,
                }
            }
        };
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = deliver_one(&delivery, inbound) => {}
        }
    }
}

/// Delivers one request, answers or dead-letters it, and acks it unless it must stay.
async fn deliver_one(d: &Delivery, inbound: InboundRequest) {
    let delivered = deliver_inbound(
        &d.homeserver,
        &d.keys,
        &inbound.sender_key,
        &inbound.origin,
        inbound.server_keys.as_deref(),
        &inbound.request,
        inbound.wants_response,
        d.policy,
    )
    .await;
    match delivered {
        // Hostile, never to be delivered: acked and dropped (the cache counted and logged it).
        Ok(Delivered::WrongSender) => {}
        Ok(Delivered::Expired) => {
            tracing::debug!("dropping a request whose caller has stopped waiting");
        }
        Ok(Delivered::Answered(response)) => {
            if let Err(e) = d.transport.respond(inbound.id, response).await {
                tracing::warn!(error = %e, "cannot send a response back");
                // Too large for the reply SURBs: a short error (4xx, so the caller's
                // homeserver does not back off from us) instead of a silent timeout.
                if let ClientError::CannotRespond(_) = e {
                    let _ = d.transport.respond(inbound.id, too_large_response()).await;
                }
            }
            tracing::debug!("inbound request delivered to the homeserver");
        }
        Ok(Delivered::Accepted) => {
            tracing::debug!("inbound transaction delivered to the homeserver");
        }
        Err(e) => {
            let (status, attempts) = match e {
                DeliveryError::Refused { status, attempts } => (status, attempts),
                _ => (0, 1),
            };
            match d
                .dead_letters
                .put(&inbound.origin, &inbound.request, status, attempts)
            {
                Ok(id) => {
                    d.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    // No content, no origin, no mailbox ids: the operator's CLI shows those.
                    tracing::warn!(
                        dead_letter = %id,
                        status,
                        attempts,
                        "the homeserver refuses an inbound transaction; moved to the dead-letter store"
                    );
                }
                Err(store) => {
                    // Not acked: it stays in the inbox and is tried again after a restart.
                    tracing::error!(error = %store, "cannot dead-letter a refused transaction; kept in the inbox");
                    return;
                }
            }
        }
    }
    if let Err(e) = d.transport.ack(inbound.id).await {
        tracing::warn!(error = %e, "cannot ack an inbound request");
    }
}

/// Resolves once `stop` turns true, also if it did before this task subscribed.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
