//! Failure detection faster than the session timeout.
//!
//! A broker whose process died is visible at once: its listener refuses
//! connections, and its followers' fetch connections to it break. A broker
//! that is merely slow (a long GC pause, SIGSTOP, a loaded host) still
//! accepts connections in the kernel, so it keeps its session until the
//! timeout, as in Kafka. So a suspicion (a broken fetch connection, a late
//! heartbeat) is only acted on after a probe of the suspect's listener
//! proves it gone: the controller fences it then, and its partitions get new
//! leaders in well under a second instead of `broker.session.timeout.ms`.

use std::collections::BTreeSet;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// How long a probe waits for a connection: a live listener on a loaded
/// host answers a SYN well within it. No answer proves nothing.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a probe of a broker's listener found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The connection was accepted (perhaps by the kernel of a stopped process).
    Listening,
    /// Refused, or no route to the host: nothing listens there any more.
    Gone,
    /// No answer in time, or an address that does not resolve: not proof.
    Unknown,
}

/// Tries a TCP connection to `addr` (a broker's Kafka listener).
pub async fn probe(addr: &str) -> Probe {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Probe::Listening,
        Ok(Err(e)) => probe_error(&e),
        Err(_) => Probe::Unknown,
    }
}

fn probe_error(e: &std::io::Error) -> Probe {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => Probe::Gone,
        _ => Probe::Unknown,
    }
}

/// Whether an error on a replica fetch connection suggests its leader died:
/// the connection was refused, reset or closed under the fetch.
pub fn suggests_a_dead_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
            | ErrorKind::BrokenPipe
            | ErrorKind::HostUnreachable
    )
}

/// The brokers this broker suspects dead, reported with its next heartbeat,
/// which the suspicion brings forward.
#[derive(Default)]
pub struct Suspicions {
    ids: Mutex<BTreeSet<i32>>,
    raised: Notify,
}

impl Suspicions {
    pub fn raise(&self, broker: i32) {
        if self.ids.lock().insert(broker) {
            self.raised.notify_one();
        }
    }

    /// The suspects since the last call.
    pub fn take(&self) -> Vec<i32> {
        std::mem::take(&mut *self.ids.lock()).into_iter().collect()
    }

    /// Resolves when a new suspicion is raised.
    pub async fn raised(&self) {
        self.raised.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed port is gone; an open listener is listening, even when
    /// nothing ever accepts from it (a stopped process).
    #[tokio::test]
    async fn probes_tell_a_gone_listener_from_a_silent_one() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        assert_eq!(probe(&addr).await, Probe::Listening);
        drop(silent);
        assert_eq!(probe(&addr).await, Probe::Gone);
        assert_eq!(probe("not-a-host.invalid:9092").await, Probe::Unknown);
    }

    #[test]
    fn each_suspect_is_reported_once() {
        let s = Suspicions::default();
        s.raise(2);
        s.raise(2);
        s.raise(3);
        assert_eq!(s.take(), vec![2, 3]);
        assert!(s.take().is_empty());
    }
}
