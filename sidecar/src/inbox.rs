//! The inbound half of the sidecar: every request the transport receives goes to the
//! homeserver through [`deliver_inbound`], one queue per origin.
//!
//! Per origin, transactions are delivered in the origin's send order (the sequence number
//! its transport sealed in each bundle, put back in order by [`SendOrder`]: a gap is waited
//! for up to [`InboxOrder::gap_wait`], then skipped, logged and counted), one at a time, each
//! retried with its own backoff while the failure is transient; request/response calls need
//! no order and go straight through, each in its own task, until their caller's deadline; a transaction the homeserver refuses for good
//! goes to the [`DeadLetters`] store after a bounded number of refusals and is acked only once
//! it is there. One origin's refusals or slow answers therefore never hold up another origin's
//! deliveries, and nothing is lost across a crash: a request leaves the transport's inbox only
//! when delivered, answered, expired or durably dead-lettered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use spore_client::{ClientError, InboundRequest, Transport};
use tokio::sync::{mpsc, watch};

use crate::dead_letter::DeadLetters;
use crate::homeserver::{
    Delivered, DeliveryError, LocalHomeserver, RetryPolicy, authenticate_origin, deliver_inbound,
    request_deadline, request_expired, too_large_response,
};
use crate::peer_book::PeerBook;
use crate::send_order::{NextExpected, NextInOrder, SendOrder};
use crate::server_keys::{ServerKeyCache, unix_ms};

/// The file in the data dir that keeps, per origin, the send-order number expected next.
pub(crate) const DELIVERY_ORDER_FILE: &str = "delivery_order.json";

/// How inbound transactions are put back in their origin's send order.
#[derive(Debug)]
pub(crate) struct InboxOrder {
    pub(crate) next_expected: NextExpected,
    /// How long a transaction that arrived ahead of a missing one is held.
    pub(crate) gap_wait: Duration,
}

/// An origin's queue with nothing in it for this long ends its task (a new one starts with
/// the origin's next request).
const IDLE_WORKER: Duration = Duration::from_secs(60);

/// Counters of the inbound path (what an operator's metrics read).
#[derive(Debug, Default)]
pub struct InboundCounters {
    dead_lettered: AtomicU64,
    order_gaps: AtomicU64,
    skipped_in_order: AtomicU64,
    expired_requests: AtomicU64,
}

impl InboundCounters {
    /// Transactions written to the dead-letter store since start.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Gaps in an origin's send order that were not filled in time (delivery went on).
    pub fn order_gaps(&self) -> u64 {
        self.order_gaps.load(Ordering::Relaxed)
    }

    /// Sequence numbers given up on in those gaps (a straggler that comes later is still
    /// delivered, out of order).
    pub fn skipped_in_order(&self) -> u64 {
        self.skipped_in_order.load(Ordering::Relaxed)
    }

    /// Request/response calls not executed because their caller had given up.
    pub fn expired_requests(&self) -> u64 {
        self.expired_requests.load(Ordering::Relaxed)
    }
}

/// What every origin's task shares.
pub(crate) struct Delivery {
    pub(crate) transport: Transport,
    pub(crate) homeserver: LocalHomeserver,
    pub(crate) keys: Arc<ServerKeyCache>,
    /// Learns each authenticated origin's Spore address.
    pub(crate) peers: PeerBook,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) policy: RetryPolicy,
    pub(crate) order: InboxOrder,
    pub(crate) counters: Arc<InboundCounters>,
}

/// Reads the inbox and hands each request to its origin's queue, starting that origin's task
/// when it has none.
pub(crate) async fn deliver_inbox(delivery: Delivery, mut stop: watch::Receiver<bool>) {
    let transport = delivery.transport.clone();
    let delivery = Arc::new(delivery);
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
        if let Some(json) = &inbound.server_keys {
            delivery
                .keys
                .insert_on_arrival(&inbound.origin, &inbound.sender_key, json, unix_ms());
        }
        queues.retain(|_, q| !q.is_closed());
        let stream = sender_stream(&inbound);
        // A closed queue (its task went idle) hands the request back: start a new task.
        let inbound = match queues.get(&stream) {
            Some(queue) => match queue.send(inbound) {
                Ok(()) => continue,
                Err(mpsc::error::SendError(inbound)) => inbound,
            },
            None => inbound,
        };
        let (queue, requests) = mpsc::unbounded_channel();
        let _ = queue.send(inbound);
        queues.insert(stream.clone(), queue);
        tokio::spawn(deliver_origin(
            delivery.clone(),
            stream,
            requests,
            stop.clone(),
        ));
    }
}

/// One origin's task (one [`sender_stream`]): its transactions in send order, until its queue
/// stays empty for [`IDLE_WORKER`]; its request/response calls as they come.
async fn deliver_origin(
    delivery: Arc<Delivery>,
    stream: String,
    mut requests: mpsc::UnboundedReceiver<InboundRequest>,
    mut stop: watch::Receiver<bool>,
) {
    let mut order = SendOrder::new(
        delivery.order.next_expected.get(&stream),
        delivery.order.gap_wait,
    );
    loop {
        let wait = match order.poll(Instant::now()) {
            NextInOrder::Deliver {
                sequence,
                item,
                skipped,
            } => {
                if skipped > 0 {
                    delivery.counters.order_gaps.fetch_add(1, Ordering::Relaxed);
                    delivery
                        .counters
                        .skipped_in_order
                        .fetch_add(skipped, Ordering::Relaxed);
                    // No origin, no ids: how many, and that delivery goes on.
                    tracing::warn!(
                        missing = skipped,
                        "transactions missing from an origin's send order did not arrive in time; delivering the later ones"
                    );
                }
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = deliver_one(&delivery, item, Some(sequence)) => {}
                }
                continue;
            }
            NextInOrder::WaitUntil(until) => until.saturating_duration_since(Instant::now()),
            NextInOrder::Idle => IDLE_WORKER,
        };
        let next = tokio::select! {
            () = stopped(&mut stop) => return,
            r = tokio::time::timeout(wait, requests.recv()) => r,
        };
        let inbound = match next {
            Ok(Some(inbound)) => inbound,
            Ok(None) => return,
            Err(_) if !order.is_empty() => continue,
            Err(_) => {
                // Closing first means no request can be queued and then lost: what arrived
                // before the close is still delivered here (in order, without waiting for
                // gaps: later requests go to a new task), anything later starts a new task.
                requests.close();
                while let Ok(inbound) = requests.try_recv() {
                    if let Some(inbound) = take_in_order(&mut order, inbound) {
                        route(&delivery, inbound, &mut stop).await;
                    }
                }
                for (sequence, inbound) in order.drain() {
                    tokio::select! {
                        () = stopped(&mut stop) => return,
                        () = deliver_one(&delivery, inbound, Some(sequence)) => {}
                    }
                }
                return;
            }
        };
        if let Some(inbound) = take_in_order(&mut order, inbound) {
            route(&delivery, inbound, &mut stop).await;
        }
    }
}

/// Holds a sequenced transaction in `order`; hands back what is to go at once: calls, requests
/// without a number, and transactions whose turn has passed.
fn take_in_order(
    order: &mut SendOrder<InboundRequest>,
    inbound: InboundRequest,
) -> Option<InboundRequest> {
    match inbound.sequence {
        Some(sequence) if !inbound.wants_response => order.insert(sequence, inbound),
        _ => Some(inbound),
    }
}

/// A request that does not wait for its turn: a call goes in its own task (its caller's
/// deadline is running, and it must not wait behind a transaction the homeserver is slow to
/// take), anything else is delivered here.
async fn route(
    delivery: &Arc<Delivery>,
    inbound: InboundRequest,
    stop: &mut watch::Receiver<bool>,
) {
    if inbound.wants_response {
        let delivery = delivery.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stopped(&mut stop) => {}
                () = deliver_one(&delivery, inbound, None) => {}
            }
        });
    } else {
        tokio::select! {
            () = stopped(stop) => {}
            () = deliver_one(delivery, inbound, None) => {}
        }
    }
}

/// Delivers one request, answers or dead-letters it, and acks it unless it must stay. For the
/// transaction numbered `sequence` in its origin's send order, records the next number
/// expected before the ack.
async fn deliver_one(d: &Delivery, inbound: InboundRequest, sequence: Option<u64>) {
    let delivered = if authenticate_origin(
        &d.keys,
        &inbound.sender_key,
        &inbound.origin,
        inbound.server_keys.as_deref(),
    ) {
        // Before the homeserver sees the request: while handling it, it may call the origin
        // back (missing events, keys), and that needs the origin's address.
        learn_sender(d, &inbound);
        crate::capabilities::learn_sender_capability(&d.transport, &inbound).await;
        deliver_inbound(
            &d.homeserver,
            &d.keys,
            &inbound.sender_key,
            &inbound.origin,
            // Cached above.
            None,
            &inbound.request,
            inbound.wants_response,
            d.policy,
        )
        .await
    } else {
        Ok(Delivered::WrongSender)
    };
    match delivered {
        // Hostile, never to be delivered: acked and dropped (the cache counted and logged it).
        Ok(Delivered::WrongSender) => {}
        Ok(Delivered::Expired) => {
            d.counters.expired_requests.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("dropping a request whose caller has stopped waiting");
        }
        // The homeserver took so long that the caller has gone: an answer (perhaps megabytes
        // by store-and-forward) would only be dropped at its end.
        Ok(Delivered::Answered(_)) if request_expired(&inbound.request, unix_ms()) => {
            d.counters.expired_requests.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("not answering a request whose caller has stopped waiting");
        }
        Ok(Delivered::Answered(response)) => {
            let deadline = request_deadline(&inbound.request);
            if let Err(e) = d
                .transport
                .respond_until(inbound.id, response, deadline)
                .await
            {
                tracing::warn!(error = %e, "cannot send a response back");
                // Too large even for a store-and-forward answer: a short error (4xx, so the
                // caller's homeserver does not back off from us) instead of a silent timeout.
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
    if let Some(sequence) = sequence {
        // Only forward: a straggler delivered late must not make the origin's later ones wait.
        let next = sequence.saturating_add(1);
        let stream = sender_stream(&inbound);
        if next > d.order.next_expected.get(&stream) {
            d.order.next_expected.set(&stream, next);
        }
    }
    if let Err(e) = d.transport.ack(inbound.id).await {
        tracing::warn!(error = %e, "cannot ack an inbound request");
    }
}

/// Records the Spore address an authenticated request's bundle names for its sender in the
/// peer book (so this server can answer and send to a peer that contacted it first), once
/// the origin's server keys are verified and pinned too. Refusals are counted and logged by
/// the book.
fn learn_sender(d: &Delivery, inbound: &InboundRequest) {
    let Some(address) = &inbound.sender else {
        return;
    };
    if d.keys.get(&inbound.origin, unix_ms()).is_none() {
        return;
    }
    let _ = d
        .peers
        .update_from_bundle(&inbound.origin, &inbound.sender_key, address);
}

/// The send-order stream a request belongs to: its claimed origin *and* the Spore key that
/// sealed it. Keyed on the name alone, a peer claiming another server's name (refused at
/// delivery, but only once its turn came) could put a huge sequence number in that server's
/// stream: a gap wait for the real server, then every real transaction below the forged
/// number delivered as a straggler, out of order. Its own stream costs nobody else anything.
fn sender_stream(inbound: &InboundRequest) -> String {
    let key: String = inbound
        .sender_key
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{} {key}", inbound.origin)
}

/// Resolves once `stop` turns true, also if it did before this task subscribed.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
