//! Leader election with a coordination.k8s.io Lease: acquire, then renew;
//! a replica that loses the lease exits so it restarts as a standby.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::Api;

pub const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long after the last successful renewal the leader stops acting
/// (client-go's renewDeadline): well before others may take the lease
/// (LEASE_SECONDS after that renewal), so two leaders never act at once.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// Whether a leader whose last renewal succeeded `since_renewal` ago must
/// stop acting (pure).
pub fn must_step_down(since_renewal: Duration) -> bool {
    since_renewal >= RENEW_DEADLINE
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Whether `holder` may take the lease: it is free, ours, or expired (pure).
pub fn may_take(spec: &LeaseSpec, holder: &str, now: k8s_openapi::jiff::Timestamp) -> bool {
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(h) if h == holder => true,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
            match &spec.renew_time {
                Some(t) => t.0.as_second() + duration < now.as_second(),
                None => true,
            }
        }
    }
}

/// One attempt to take or renew the lease; Ok(true) when we hold it.
pub async fn try_hold(api: &Api<Lease>, name: &str, holder: &str) -> Result<bool, kube::Error> {
    let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.into()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let mut spec = lease.spec.clone().unwrap_or_default();
            if !may_take(&spec, holder, k8s_openapi::jiff::Timestamp::now()) {
                return Ok(false);
            }
            if spec.holder_identity.as_deref() != Some(holder) {
                spec.acquire_time = Some(now());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.holder_identity = Some(holder.into());
            }
            spec.lease_duration_seconds = Some(LEASE_SECONDS);
            spec.renew_time = Some(now());
            lease.spec = Some(spec);
            // The resourceVersion in the metadata makes this a compare-and-swap.
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this replica holds the lease.
pub async fn acquire(api: &Api<Lease>, name: &str, holder: &str) {
    loop {
        match try_hold(api, name, holder).await {
            Ok(true) => {
                tracing::info!(lease = name, holder, "acquired leadership");
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "lease acquisition failed"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

/// Renews until the lease is lost or could not be renewed within
/// RENEW_DEADLINE of the last success (measured on the clock, whatever the
/// calls cost); returns then, and the caller stops acting.
pub async fn keep(api: Api<Lease>, name: String, holder: String) {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let left = RENEW_DEADLINE.saturating_sub(last_renewal.elapsed());
        match tokio::time::timeout(left, try_hold(&api, &name, &holder)).await {
            Ok(Ok(true)) => last_renewal = tokio::time::Instant::now(),
            Ok(Ok(false)) => {
                tracing::error!(lease = %name, "lost leadership");
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
            Err(_) => tracing::warn!("lease renewal timed out"),
        }
        if must_step_down(last_renewal.elapsed()) {
            tracing::error!(lease = %name, "could not renew the lease in time; stepping down");
            return;
        }
    }
}

/// Gives the lease up on shutdown (client-go's ReleaseOnCancel): a standby
/// takes over at once instead of waiting for it to expire.
pub async fn release(api: &Api<Lease>, name: &str, holder: &str) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(name).await? else {
        return Ok(());
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(holder) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    lease.spec = Some(spec);
    api.replace(name, &PostParams::default(), &lease).await?;
    tracing::info!(lease = name, "released the leader lease");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn a_leader_steps_down_before_others_may_take_the_lease() {
        assert!(!must_step_down(Duration::from_secs(9)));
        assert!(must_step_down(RENEW_DEADLINE));
        assert!(RENEW_DEADLINE < Duration::from_secs(LEASE_SECONDS as u64));
    }

    #[test]
    fn a_lease_is_taken_when_free_ours_or_expired() {
        let at = |s: i64| MicroTime(Timestamp::from_second(s).unwrap());
        let now = Timestamp::from_second(1_000).unwrap();
        assert!(may_take(&LeaseSpec::default(), "me", now));
        let held = LeaseSpec {
            holder_identity: Some("other".into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(at(990)),
            ..LeaseSpec::default()
        };
        assert!(!may_take(&held, "me", now), "held and fresh");
        assert!(may_take(&held, "other", now), "the holder renews");
        let stale = LeaseSpec {
            renew_time: Some(at(980)),
            ..held
        };
        assert!(may_take(&stale, "me", now), "expired");
    }
}
