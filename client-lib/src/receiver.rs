//! The inbound side: pulled forward items are opened, persisted, reassembled, deduplicated
//! and put in the durable inbox, all flushed before the sender deletes them at the relay.
//!
//! Every item's seal authenticates the mailbox key that sent it (issue 16). A message's
//! fragments must all come from that one key, the inbox entry carries it, and dedup is keyed
//! on it: a peer that claims another server's `origin` cannot pre-empt that server's
//! `(origin, txnId)`, it only fills its own.

use std::sync::Arc;
use std::time::Duration;

use spore_protocol::bundle::{self, Bundle, BundleBody};
use spore_protocol::link::MailboxItem;
use spore_protocol::packet::{ForwardPayload, open_final_payload};
use spore_protocol::params::FRAGMENT_DATA_SIZE;
use spore_protocol::{Fragment, MessageId, seal};

use crate::dedup::dedup_key;
use crate::directory::now_ms;
use crate::error::Result;
use crate::events::bump;
use crate::inbox_entry;
use crate::shared::{Shared, stopped};
use crate::store::{FragmentOutcome, Store};

/// How often stale partial messages and old dedup keys are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What processing one pull's forward items left for the sender.
#[derive(Debug, Default)]
pub(crate) struct Processed {
    /// Items that may now be deleted at the relay.
    pub handles: Vec<u64>,
    /// Nonces of loop messages that came back (the sender knows which it is waiting for).
    pub loops: Vec<[u8; 16]>,
}

/// Opens, persists and delivers forward items; returns the handles that may now be deleted
/// (every item: garbage is deleted too, it will never become readable). Only returns after
/// everything is flushed; on a storage error returns no handles, so the items are pulled
/// again later.
pub(crate) async fn process_forward(shared: &Arc<Shared>, items: Vec<MailboxItem>) -> Processed {
    let s = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut handles = Vec::with_capacity(items.len());
        let mut loops = Vec::new();
        let mut delivered = 0usize;
        let mut wrote = false;
        for item in items {
            if let Some((sender, fragment)) = open_item(&s, &item)? {
                let (stored, n) = store_fragment(&s, &sender, &fragment, &mut loops)?;
                wrote |= stored;
                delivered += n;
            }
            handles.push(item.handle);
        }
        Ok::<_, crate::error::ClientError>((Processed { handles, loops }, delivered, wrote))
    })
    .await;
    let (processed, delivered, wrote) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot store pulled items; they stay at the relay");
            return Processed::default();
        }
        Err(_) => return Processed::default(),
    };
    // Loops and garbage leave nothing on disk: only pay for a flush when something was stored.
    if wrote && let Err(e) = shared.store.flush().await {
        tracing::error!(error = %e, "cannot flush pulled items; they stay at the relay");
        return Processed {
            handles: Vec::new(),
            loops: processed.loops,
        };
    }
    if delivered > 0 {
        shared.inbox_notify.notify_waiters();
    }
    processed
}

/// The authenticated sender key and the fragment inside a forward item, or `None` for
/// anything that does not open with our key (a stale ack from before a restart, a forged or
/// corrupted item, an anonymous seal of an older version). Never an error for bad input:
/// only the store can fail.
fn open_item(shared: &Shared, item: &MailboxItem) -> Result<Option<([u8; 32], Fragment)>> {
    let opened = open_final_payload(&item.payload[..])
        .and_then(|plain| ForwardPayload::decode(&plain))
        .and_then(|fwd| seal::open(shared.key.secret(), &fwd.sealed_fragment))
        .and_then(|opened| {
            Fragment::decode(&opened.plaintext, FRAGMENT_DATA_SIZE)
                .map(|f| (opened.sender.to_bytes(), f))
        });
    match opened {
        Ok(f) => Ok(Some(f)),
        Err(e) => {
            tracing::debug!(reason = e.reason(), "dropping an unreadable mailbox item");
            bump(&shared.counters.inbound_dropped);
            Ok(None)
        }
    }
}

/// Persists one fragment; if it completes its message, handles the bundle. Returns whether
/// anything was written, and the number of requests put in the inbox (0 or 1).
fn store_fragment(
    shared: &Shared,
    sender: &[u8; 32],
    fragment: &Fragment,
    loops: &mut Vec<[u8; 16]>,
) -> Result<(bool, usize)> {
    let now = now_ms();
    if fragment.count > 1 && !shared.store.bind_sender(&fragment.message_id, sender)? {
        tracing::debug!("refused a fragment from another sender than its message's");
        bump(&shared.counters.inbound_dropped);
        return Ok((false, 0));
    }
    match shared.store.put_fragment(fragment, now)? {
        FragmentOutcome::Complete(padded) => {
            let (wrote, n) = handle_message(shared, sender, &padded, loops)?;
            if fragment.count > 1 {
                shared.store.finish_message(&fragment.message_id, now)?;
                return Ok((true, n));
            }
            Ok((wrote, n))
        }
        FragmentOutcome::Refused(why) => {
            tracing::debug!(why, "refused an inbound fragment");
            bump(&shared.counters.inbound_dropped);
            Ok((false, 0))
        }
        FragmentOutcome::Stored => Ok((true, 0)),
        FragmentOutcome::Duplicate => Ok((false, 0)),
    }
}

/// Returns whether anything was written, and the number of requests put in the inbox. Loop
/// nonces go to `loops`.
fn handle_message(
    shared: &Shared,
    sender: &[u8; 32],
    padded: &[u8],
    loops: &mut Vec<[u8; 16]>,
) -> Result<(bool, usize)> {
    let bundle = match bundle::unpack(padded) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(reason = e.reason(), "dropping an undecodable message");
            bump(&shared.counters.inbound_dropped);
            return Ok((false, 0));
        }
    };
    if let BundleBody::Response { .. } = bundle.body {
        take_forward_response(shared, sender, bundle);
        return Ok((false, 0));
    }
    match &bundle.body {
        BundleBody::Loop { nonce } => {
            loops.push(*nonce);
            Ok((false, 0))
        }
        BundleBody::Request { .. } if !inbox_entry::sender_matches(sender, &bundle) => {
            tracing::debug!("dropping a request whose reply address is not its sender's");
            bump(&shared.counters.inbound_dropped);
            Ok((false, 0))
        }
        BundleBody::Request {
            request_id,
            request,
            ..
        } => {
            let key = dedup_key(
                sender,
                &bundle.origin,
                &request.method,
                &request.path,
                request_id,
            );
            let entry = inbox_entry::encode(sender, &bundle);
            match shared.store.deliver(&key, &entry, now_ms())? {
                Some(_) => {
                    bump(&shared.counters.received);
                    Ok((true, 1))
                }
                None => {
                    bump(&shared.counters.duplicates);
                    Ok((false, 0))
                }
            }
        }
        // Taken above.
        BundleBody::Response { .. } => Ok((false, 0)),
    }
}

/// An answer too large for its request's reply SURBs, sent by the responder as an ordinary
/// forward message: handed to the `request()` waiting for it if the key that sealed it is the
/// one the request went to. Otherwise (the caller gave up, a second copy, another sender, or
/// over `max_reply_bytes`) dropped and counted: nothing of it is kept.
fn take_forward_response(shared: &Shared, sender: &[u8; 32], bundle: Bundle) {
    let BundleBody::Response {
        request_id,
        response,
    } = bundle.body
    else {
        return;
    };
    let waiting = {
        let mut table = shared.replies.lock().unwrap_or_else(|e| e.into_inner());
        table
            .pending
            .get_mut(&request_id)
            .filter(|p| p.responder == *sender)
            .and_then(|p| p.tx.take())
    };
    match waiting {
        Some(tx) if response.body.len() <= shared.config.max_reply_bytes => {
            tracing::debug!("a large answer arrived in our mailbox");
            let _ = tx.send(response);
        }
        _ => {
            tracing::debug!("dropping an answer that no request is waiting for");
            bump(&shared.counters.late_replies);
        }
    }
}

/// Finishes messages whose last fragment was stored but which a crash kept from delivery.
pub(crate) async fn finish_interrupted(shared: &Arc<Shared>) -> Result<()> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let pending: Vec<(MessageId, Vec<u8>)> = s.store.completed_but_unfinished()?;
        for (id, padded) in pending {
            // A completed message's fragments were all bound to one sender before storing;
            // one without (held by a version before seal v2) has no authenticated sender.
            match s.store.sender_of(&id)? {
                // Loops sent before the restart are not waited for any more.
                Some(sender) => {
                    handle_message(&s, &sender, &padded, &mut Vec::new())?;
                }
                None => {
                    tracing::warn!("dropping a reassembled message with no authenticated sender");
                    bump(&s.counters.inbound_dropped);
                }
            }
            s.store.finish_message(&id, now_ms())?;
        }
        Ok(())
    })
    .await
    .map_err(|_| crate::error::ClientError::Stopped)??;
    shared.store.flush().await
}

/// Periodically drops stale partial messages and old dedup keys.
pub(crate) async fn run_sweeper(shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let store: Store = shared.store.clone();
        let t = shared.config.timeouts;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (ttl, dedup) = (ms(t.reassembly_ttl), ms(t.dedup_ttl));
        match tokio::task::spawn_blocking(move || store.sweep(now_ms(), ttl, dedup)).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(messages = n, "dropped stale partial messages"),
            Ok(Err(e)) => tracing::warn!(error = %e, "sweep failed"),
            _ => {}
        }
    }
}
