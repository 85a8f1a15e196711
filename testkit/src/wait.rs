//! Waiting for something a test cannot be told about, with a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Polls `f` every 20 ms until it is true or `timeout` passes, then asks one last time.
///
/// Time is tokio's, so a test on a paused clock waits in its own time; the last look after the
/// deadline means a condition that came true during the final sleep still counts.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// Runs `fut` with a deadline, panicking with `what` if it is missed.
pub async fn within<T>(timeout: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}
