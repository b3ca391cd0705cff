//! The replication throttle (Kafka's `leader.replication.throttled.rate`):
//! bytes per second a leader serves to replicas that a reassignment is
//! adding, so copying a partition to a new broker does not starve clients
//! and in-sync followers of disk and network.
//!
//! A token bucket holding at most one second of the rate. A fetch is served
//! while the bucket is not in debt and its bytes are then taken, so the
//! average stays at the rate while whole batches still go out.

use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::Mutex;

/// No throttle: Kafka's default, Long.MAX_VALUE.
pub const UNLIMITED: i64 = i64::MAX;

pub struct ReplicationThrottle {
    rate: AtomicI64,
    /// (tokens in bytes, when last refilled in ms).
    bucket: Mutex<(f64, i64)>,
}

impl Default for ReplicationThrottle {
    fn default() -> Self {
        ReplicationThrottle {
            rate: AtomicI64::new(UNLIMITED),
            bucket: Mutex::new((0.0, 0)),
        }
    }
}

impl ReplicationThrottle {
    pub fn set_rate(&self, bytes_per_sec: i64) {
        let rate = if bytes_per_sec <= 0 { UNLIMITED } else { bytes_per_sec };
        if self.rate.swap(rate, Ordering::Relaxed) != rate {
            // A new rate starts with a full second of it.
            *self.bucket.lock() = (rate as f64, crate::log::segment::now_ms());
        }
    }

    pub fn rate(&self) -> i64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Whether a throttled fetch must wait (answer empty) at `now_ms`.
    pub fn exhausted(&self, now_ms: i64) -> bool {
        let rate = self.rate();
        if rate == UNLIMITED {
            return false;
        }
        let mut bucket = self.bucket.lock();
        refill(&mut bucket, rate, now_ms);
        bucket.0 < 0.0
    }

    /// A throttled fetch served `bytes`.
    pub fn record(&self, bytes: usize, now_ms: i64) {
        let rate = self.rate();
        if rate == UNLIMITED {
            return;
        }
        let mut bucket = self.bucket.lock();
        refill(&mut bucket, rate, now_ms);
        bucket.0 -= bytes as f64;
    }
}

fn refill(bucket: &mut (f64, i64), rate: i64, now_ms: i64) {
    let elapsed = (now_ms - bucket.1).max(0) as f64 / 1000.0;
    bucket.0 = (bucket.0 + elapsed * rate as f64).min(rate as f64);
    bucket.1 = now_ms;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Served as fast as asked, a throttled replica gets the rate on
    /// average, one second's burst and one fetch above it at most.
    #[test]
    fn the_average_stays_at_the_rate() {
        let t = ReplicationThrottle::default();
        assert!(!t.exhausted(0), "unthrottled by default");
        t.set_rate(1_000_000);
        let start = t.bucket.lock().1;
        let fetch = 256 * 1024;
        let mut served = 0usize;
        for ms in (0..10_000).step_by(10) {
            if !t.exhausted(start + ms) {
                t.record(fetch, start + ms);
                served += fetch;
            }
        }
        let limit = 10 * 1_000_000 + 1_000_000 + fetch;
        assert!(
            served <= limit && served >= 9 * 1_000_000,
            "served {served} in 10 s at 1 MB/s"
        );
        t.set_rate(-1);
        assert!(!t.exhausted(start + 10_000));
    }
}
