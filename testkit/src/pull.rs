//! The owner's half of the pull/delete conversation, spoken over a raw link: one pull is always
//! exactly `PULL_SLOTS` slots, and a deletion counts only once `DeleteDone` comes back.

use spore_protocol::link::{Frame, MailboxItem};
use spore_protocol::params::PULL_SLOTS;
use spore_relay::Link;

/// Why a pull or delete did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The link died (the relay was stopped or killed).
    #[error("link: {0}")]
    Link(#[from] spore_relay::RelayError),
    /// The relay refused (a deletion it cannot write, on a full disk).
    #[error("the relay refused: {0:?}")]
    Refused(Frame),
}

/// One pull: exactly `PULL_SLOTS` slots, in order; returns the real items.
pub async fn try_pull(link: &mut Link) -> Result<Vec<MailboxItem>, PullError> {
    link.send(&Frame::PullRequest).await?;
    let mut items = Vec::new();
    for i in 0..PULL_SLOTS {
        match link.recv().await? {
            Frame::PullSlot(slot) => {
                assert_eq!(usize::from(slot.index), i);
                items.extend(slot.item);
            }
            other => panic!("expected a pull slot, got {other:?}"),
        }
    }
    Ok(items)
}

/// Deletes `handles`; `Ok(count)` once the relay says the deletion is on disk.
pub async fn try_delete(link: &mut Link, handles: Vec<u64>) -> Result<u32, PullError> {
    link.send(&Frame::Delete { handles }).await?;
    match link.recv().await? {
        Frame::DeleteDone { count } => Ok(count),
        // A relay that cannot write (full disk) refuses the deletion: not confirmed.
        refused @ Frame::Error { .. } => Err(PullError::Refused(refused)),
        other => panic!("expected DeleteDone, got {other:?}"),
    }
}

/// [`try_pull`] on a link that must stay up.
pub async fn pull(link: &mut Link) -> Vec<MailboxItem> {
    match try_pull(link).await {
        Ok(items) => items,
        Err(e) => panic!("pull failed: {e}"),
    }
}

/// [`try_delete`] on a link that must stay up, for a deletion that must succeed.
pub async fn delete(link: &mut Link, handles: Vec<u64>) -> u32 {
    match try_delete(link, handles).await {
        Ok(count) => count,
        Err(e) => panic!("expected DeleteDone: {e}"),
    }
}

/// Pulls and deletes until the mailbox is empty; returns how many items there were.
pub async fn drain(link: &mut Link) -> usize {
    let mut n = 0;
    loop {
        let items = pull(link).await;
        if items.is_empty() {
            return n;
        }
        n += items.len();
        delete(link, items.iter().map(|i| i.handle).collect()).await;
    }
}
