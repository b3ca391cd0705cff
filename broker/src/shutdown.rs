//! The shutdown signal every listener and background task waits on.

use tokio::sync::watch;

/// Resolves once shutdown has been signalled (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
