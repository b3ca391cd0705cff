//! Leader election with a coordination.k8s.io Lease: acquire, then renew;
//! a replica that loses the lease exits so it restarts as a standby.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::Api;

pub const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);

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

/// Renews until the lease is lost; returns then.
pub async fn keep(api: Api<Lease>, name: String, holder: String) {
    let mut failures_since_renew = Duration::ZERO;
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match try_hold(&api, &name, &holder).await {
            Ok(true) => failures_since_renew = Duration::ZERO,
            Ok(false) => {
                tracing::error!(lease = %name, "lost leadership");
                return;
            }
            Err(e) => {
                failures_since_renew += RENEW_EVERY;
                tracing::warn!(error = %e, "lease renewal failed");
                if failures_since_renew >= Duration::from_secs(LEASE_SECONDS as u64) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

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
