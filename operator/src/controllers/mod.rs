//! The three controllers, each: observe -> decide (pure) -> apply -> report.

pub mod cluster;
pub mod consumer_group;
pub mod topic;

use std::sync::Arc;
use std::time::Instant;

use kube::runtime::controller::Action;
use kube::ResourceExt;

use crate::{Context, Error};

/// Field manager for server-side apply.
pub const MANAGER: &str = "fjord-operator";

pub fn paused<K: ResourceExt>(obj: &K) -> bool {
    obj.annotations()
        .get(fjord_crds::PAUSE_ANNOTATION)
        .is_some_and(|v| v == "true")
}

pub fn key<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Backoff on errors, per object and growing (1s .. 5min).
pub fn error_policy<K: ResourceExt>(controller: &'static str) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |obj, error, ctx| {
        ctx.metrics.errors.with_label_values(&[controller]).inc();
        let wait = ctx.backoff(&key(obj.as_ref()));
        tracing::warn!(controller, object = %key(obj.as_ref()), %error, retry_in = ?wait, "reconcile failed");
        Action::requeue(wait)
    }
}

/// Counts and times a reconcile.
pub struct Timer {
    controller: &'static str,
    started: Instant,
    ctx: Arc<Context>,
}

impl Timer {
    pub fn start(controller: &'static str, ctx: &Arc<Context>) -> Timer {
        ctx.metrics.reconciliations.with_label_values(&[controller]).inc();
        Timer {
            controller,
            started: Instant::now(),
            ctx: ctx.clone(),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.ctx
            .metrics
            .duration
            .with_label_values(&[self.controller])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Writes `status` by server-side apply when [`status_write_due`] says so
/// (anything a user reads changed, or counters after `refresh`); returns
/// whether it wrote.
pub async fn write_status<K, S>(
    ctx: &Context,
    obj: &K,
    previous: Option<&S>,
    status: &S,
    counters: &[&str],
    refresh: std::time::Duration,
) -> Result<bool, Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: serde::Serialize,
{
    let previous = serde_json::to_value(previous).unwrap_or_default();
    let next = serde_json::to_value(status).unwrap_or_default();
    let object = key(obj);
    let since = ctx.since_status_write(&object);
    if !crate::plan::status_write_due(&previous, &next, counters, since, refresh) {
        return Ok(false);
    }
    let api = kube::Api::<K>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": next,
    });
    api.patch_status(
        &obj.name_any(),
        &kube::api::PatchParams::apply(MANAGER).force(),
        &kube::api::Patch::Apply(patch),
    )
    .await?;
    ctx.status_written(&object);
    Ok(true)
}

pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
}
