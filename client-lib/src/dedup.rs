//! Which inbound requests are the same request: the key under which the receiver delivers a
//! request at most once, and the Matrix `txnId` it is built from.

/// The `txnId` of a `PUT /_matrix/federation/v1/send/{txnId}`, if that is what this is.
pub fn transaction_id<'a>(method: &str, path: &'a str) -> Option<&'a str> {
    path.split('?')
        .next()
        .and_then(|p| p.strip_prefix("/_matrix/federation/v1/send/"))
        .filter(|t| method.eq_ignore_ascii_case("PUT") && !t.is_empty() && !t.contains('/'))
}

/// The key under which a request is delivered at most once: `(sender key, origin, txnId)` for
/// a transaction, `(sender key, origin, request id)` for anything else. The sender key is the
/// one the seal authenticated, so a peer claiming another server's origin only ever collides
/// with its own requests, never pre-empts the real server's (issue 16).
pub(crate) fn dedup_key(
    sender_key: &[u8; 32],
    origin: &str,
    method: &str,
    path: &str,
    request_id: &[u8; 16],
) -> Vec<u8> {
    let mut key = Vec::with_capacity(32 + origin.len() + 64);
    key.extend_from_slice(sender_key);
    key.extend_from_slice(origin.as_bytes());
    key.push(0);
    match transaction_id(method, path) {
        Some(txn) => {
            key.extend_from_slice(b"txn\0");
            key.extend_from_slice(txn.as_bytes());
        }
        None => {
            key.extend_from_slice(b"req\0");
            key.extend_from_slice(request_id);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::dedup_key;

    #[test]
    fn transactions_dedup_by_origin_and_txn_id_other_requests_by_request_id() {
        let a = dedup_key(
            &[7; 32],
            "a.example",
            "PUT",
            "/_matrix/federation/v1/send/42",
            &[1; 16],
        );
        let b = dedup_key(
            &[7; 32],
            "a.example",
            "PUT",
            "/_matrix/federation/v1/send/42",
            &[2; 16],
        );
        assert_eq!(a, b, "a retried transaction is the same transaction");
        let c = dedup_key(
            &[7; 32],
            "b.example",
            "PUT",
            "/_matrix/federation/v1/send/42",
            &[1; 16],
        );
        assert_ne!(a, c, "txn ids are scoped by origin");
        let d = dedup_key(
            &[7; 32],
            "a.example",
            "GET",
            "/_matrix/federation/v1/query/x",
            &[1; 16],
        );
        let e = dedup_key(
            &[7; 32],
            "a.example",
            "GET",
            "/_matrix/federation/v1/query/x",
            &[2; 16],
        );
        assert_ne!(d, e);
        let f = dedup_key(
            &[8; 32],
            "a.example",
            "PUT",
            "/_matrix/federation/v1/send/42",
            &[1; 16],
        );
        assert_ne!(
            a, f,
            "another sender's (origin, txnId) is another transaction"
        );
    }
}
