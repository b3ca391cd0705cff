//! Progress of the partition reassignments in a cluster, and an estimate of
//! the time they have left, for the Cluster's status. Pure: the cluster
//! controller observes the moving partitions through the admin API each pass
//! and keeps the previous pass's progress in the status.

use fjord_crds::ReassignmentStatus;
use k8s_openapi::jiff::Timestamp;

/// Seconds of moving before the pace so far gives the estimate.
const PACE_AFTER_SECS: i64 = 10;

/// A partition a reassignment is moving, as the admin API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moving {
    /// Its size at its leader.
    pub size_bytes: i64,
    /// Replicas the move adds (each copies the partition).
    pub adding: usize,
}

/// The progress after this pass: `None` once nothing moves. Partitions that
/// stopped moving since the last pass count as done; the estimate follows
/// the pace so far once one finished (after 10 s), else the bytes of the
/// moving partitions at the throttle.
pub fn progress(
    previous: Option<&ReassignmentStatus>,
    moving: &[Moving],
    throttle: Option<i64>,
    now: Timestamp,
) -> Option<ReassignmentStatus> {
    if moving.is_empty() {
        return None;
    }
    let count = moving.len() as i32;
    let (started_at, done) = match previous {
        Some(p) => (
            p.started_at.clone(),
            p.partitions_done + (p.partitions_moving - count).max(0),
        ),
        None => (now.to_string(), 0),
    };
    let bytes_to_copy: i64 = moving
        .iter()
        .map(|m| m.size_bytes.max(0).saturating_mul(m.adding as i64))
        .sum();
    let elapsed = started_at
        .parse::<Timestamp>()
        .map(|t| (now.as_second() - t.as_second()).max(0))
        .unwrap_or(0);
    // The pace needs some history to mean anything; until then the bytes
    // at the throttle (each broker copies at most that much a second).
    let estimate = if done > 0 && elapsed >= PACE_AFTER_SECS {
        Some(elapsed * i64::from(count) / i64::from(done))
    } else {
        throttle.filter(|t| *t > 0).map(|t| bytes_to_copy / t)
    };
    Some(ReassignmentStatus {
        started_at,
        partitions_moving: count,
        partitions_done: done,
        bytes_to_copy,
        estimated_seconds_remaining: estimate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("a valid time")
    }

    fn moving(n: usize, size: i64) -> Vec<Moving> {
        vec![
            Moving {
                size_bytes: size,
                adding: 1
            };
            n
        ]
    }

    #[test]
    fn the_estimate_follows_the_throttle_then_the_pace() {
        let first = progress(None, &moving(10, 1 << 20), Some(1 << 20), at(0)).expect("moving");
        assert_eq!((first.partitions_moving, first.partitions_done), (10, 0));
        assert_eq!(first.bytes_to_copy, 10 << 20);
        assert_eq!(first.estimated_seconds_remaining, Some(10));
        // 60 s later 4 are done: 6 left at 15 s each.
        let later = progress(Some(&first), &moving(6, 1 << 20), Some(1 << 20), at(60)).expect("moving");
        assert_eq!((later.partitions_moving, later.partitions_done), (6, 4));
        assert_eq!(later.started_at, first.started_at);
        assert_eq!(later.estimated_seconds_remaining, Some(90));
        assert_eq!(progress(Some(&later), &[], Some(1 << 20), at(200)), None);
        // Unthrottled and nothing finished yet: no estimate.
        assert_eq!(
            progress(None, &moving(3, 5), None, at(0))
                .expect("moving")
                .estimated_seconds_remaining,
            None
        );
    }

    proptest! {
        /// Over any sequence of passes: done never decreases, the start stays,
        /// and the estimate is never negative.
        #[test]
        fn progress_only_moves_forward(passes in proptest::collection::vec((0usize..20, 0i64..1 << 30, 0i64..600), 1..12), throttle in proptest::option::of(1i64..1 << 30)) {
            let mut previous: Option<ReassignmentStatus> = None;
            let mut clock = 0;
            for (count, size, step) in passes {
                clock += step;
                let next = progress(previous.as_ref(), &moving(count, size), throttle, at(clock));
                match (&previous, &next) {
                    (_, None) => prop_assert_eq!(count, 0),
                    (Some(p), Some(n)) => {
                        prop_assert!(n.partitions_done >= p.partitions_done);
                        prop_assert_eq!(&n.started_at, &p.started_at);
                    }
                    (None, Some(n)) => prop_assert_eq!(n.partitions_done, 0),
                }
                if let Some(n) = &next {
                    prop_assert_eq!(n.partitions_moving as usize, count);
                    prop_assert!(n.estimated_seconds_remaining.is_none_or(|s| s >= 0));
                }
                previous = next;
            }
        }
    }
}
