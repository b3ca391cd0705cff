//! Pure decisions: what to do to a topic, who owns a topic name, whether an
//! offset reset may run, and the status conditions that report it.

use std::collections::BTreeMap;

use fjord_crds::{ConsumerGroupSpec, ConsumerGroupStatus, TopicSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A topic as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTopic {
    pub partitions: i32,
    /// Every partition's replica count when they all agree and none is
    /// being reassigned; -1 while they differ or move.
    pub replication_factor: i32,
    /// Overrides set on the topic (not broker defaults).
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicAction {
    Create {
        partitions: i32,
        replicas: i32,
        configs: BTreeMap<String, String>,
    },
    GrowPartitions {
        to: i32,
    },
    /// Move replicas (through reassignment) until every partition has `to`.
    ChangeReplicationFactor {
        to: i32,
    },
    /// Config changes: Some(value) sets, None deletes an override.
    AlterConfigs {
        changes: BTreeMap<String, Option<String>>,
        reverted_drift: bool,
    },
}

/// Why a spec cannot be applied: reported as a condition, nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("partitions can only grow: the topic has {current}, the spec asks for {wanted}")]
    PartitionDecrease { current: i32, wanted: i32 },
    #[error("replicas {replicas} is more than the cluster's {brokers} brokers")]
    ReplicasAboveBrokers { replicas: i32, brokers: i32 },
    #[error("partitions must be at least 1, got {0}")]
    NoPartitions(i32),
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::PartitionDecrease { .. } => "PartitionDecrease",
            Refusal::ReplicasAboveBrokers { .. } => "ReplicasAboveBrokers",
            Refusal::NoPartitions(_) => "InvalidPartitions",
        }
    }
}

/// The actions that bring a topic to its spec (empty when it is there).
pub fn plan_topic(
    spec: &TopicSpec,
    observed: Option<&ObservedTopic>,
    brokers: i32,
) -> Result<Vec<TopicAction>, Refusal> {
    if spec.partitions < 1 {
        return Err(Refusal::NoPartitions(spec.partitions));
    }
    if spec.replicas > brokers {
        return Err(Refusal::ReplicasAboveBrokers {
            replicas: spec.replicas,
            brokers,
        });
    }
    let Some(observed) = observed else {
        return Ok(vec![TopicAction::Create {
            partitions: spec.partitions,
            replicas: spec.replicas,
            configs: spec.config.clone(),
        }]);
    };
    if spec.partitions < observed.partitions {
        return Err(Refusal::PartitionDecrease {
            current: observed.partitions,
            wanted: spec.partitions,
        });
    }
    let mut actions = Vec::new();
    if spec.partitions > observed.partitions {
        actions.push(TopicAction::GrowPartitions { to: spec.partitions });
    }
    if spec.replicas != observed.replication_factor {
        actions.push(TopicAction::ChangeReplicationFactor { to: spec.replicas });
    }
    let mut changes: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (k, v) in &spec.config {
        if observed.configs.get(k) != Some(v) {
            changes.insert(k.clone(), Some(v.clone()));
        }
    }
    for k in observed.configs.keys() {
        if !spec.config.contains_key(k) {
            changes.insert(k.clone(), None);
        }
    }
    if !changes.is_empty() {
        // Overrides the spec never had (or values it never set) were changed out of band.
        let reverted_drift = changes
            .iter()
            .any(|(k, v)| v.is_none() || observed.configs.contains_key(k));
        actions.push(TopicAction::AlterConfigs {
            changes,
            reverted_drift,
        });
    }
    Ok(actions)
}

/// A broker pod as observed for the rolling-restart gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub name: String,
    pub template_hash: String,
    pub ready: bool,
}

/// A resource claiming a topic name: (creation time RFC 3339, namespace/name).
pub type Claim = (String, String);

/// Of several resources naming one topic, the oldest wins (then by name).
pub fn topic_owner(claims: &[Claim]) -> Option<&Claim> {
    claims.iter().min()
}

/// What to do with a requested offset reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetDecision {
    None,
    Run,
    /// The group has members; it waits (condition) and retries later.
    WaitForEmptyGroup {
        members: i32,
    },
}

pub fn reset_decision(spec: &ConsumerGroupSpec, status: Option<&ConsumerGroupStatus>, members: i32) -> ResetDecision {
    let Some(reset) = &spec.offset_reset else {
        return ResetDecision::None;
    };
    if status.and_then(|s| s.last_reset_request_id.as_deref()) == Some(reset.request_id.as_str()) {
        return ResetDecision::None;
    }
    if members > 0 {
        return ResetDecision::WaitForEmptyGroup { members };
    }
    ResetDecision::Run
}

/// How a requested offset reset ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetOutcome {
    Done(String),
    /// Tried again shortly: the coordinator or a partition's leader could not
    /// answer (a broker restarting, an election).
    Retrying(String),
    /// Final for this requestId (e.g. an unknown topic); a new requestId retries.
    Failed(String),
}

impl ResetOutcome {
    /// The `OffsetReset` condition's (status, reason, message).
    pub fn condition(&self) -> (bool, &'static str, &str) {
        match self {
            ResetOutcome::Done(m) => (true, "Reset", m),
            ResetOutcome::Retrying(m) => (false, "Retrying", m),
            ResetOutcome::Failed(m) => (false, "ResetFailed", m),
        }
    }
}

/// A ConsumerGroup's Ready condition's (status, reason, message) given its
/// `OffsetReset` condition: a requested reset that failed (or is being
/// retried) means the resource is not what its spec asks.
pub fn group_ready(reset: Option<&Condition>) -> (bool, String, String) {
    match reset {
        Some(c) if c.status == "False" => (
            false,
            "OffsetResetFailed".into(),
            format!("the requested offset reset did not happen: {}", c.message),
        ),
        _ => (true, "Observed".into(), "group status is current".into()),
    }
}

/// A condition, keeping its last transition time when its status did not change.
/// Whether a new status is worth writing (pure). Every write is an event that
/// starts the next reconcile, so a status that changed only in fast-moving
/// counters (offsets, lag, `lastUpdate`) is written at most once per
/// `refresh`; anything else a user reads is written at once.
pub fn status_write_due(
    previous: &serde_json::Value,
    next: &serde_json::Value,
    counters: &[&str],
    since_last_write: Option<std::time::Duration>,
    refresh: std::time::Duration,
) -> bool {
    fn strip(v: &serde_json::Value, counters: &[&str]) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .filter(|(k, _)| !counters.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), strip(v, counters)))
                .collect(),
            serde_json::Value::Array(a) => a.iter().map(|v| strip(v, counters)).collect(),
            other => other.clone(),
        }
    }
    if strip(previous, counters) != strip(next, counters) {
        return true;
    }
    let counters_changed = strip(previous, &["lastUpdate"]) != strip(next, &["lastUpdate"]);
    counters_changed && since_last_write.is_none_or(|age| age >= refresh)
}

pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// A broker as the cluster's metadata reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredBroker {
    pub id: i32,
    pub fenced: bool,
}

/// Cluster conditions from what the StatefulSet and the brokers report.
/// `registered`: the brokers the cluster's metadata knows (Err when the admin
/// API could not be reached). Ready needs every pod ready and every expected
/// broker (node ids 0..desired, the pod ordinals) registered and unfenced:
/// pods that run but never joined the quorum are not one cluster.
pub fn cluster_conditions(
    previous: &[Condition],
    desired: i32,
    ready: i32,
    registered: Result<&[RegisteredBroker], String>,
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let joined = registered.as_ref().map_or(0, |brokers| {
        (0..desired)
            .filter(|id| brokers.iter().any(|b| b.id == *id && !b.fenced))
            .count() as i32
    });
    let all_ready = ready >= desired && registered.is_ok() && joined >= desired;
    let (reason, message) = match (&registered, ready >= desired) {
        (Ok(_), true) if joined >= desired => ("AllBrokersReady", format!("{ready}/{desired} brokers ready")),
        (Ok(_), true) => (
            "BrokersNotRegistered",
            format!("{ready}/{desired} brokers ready, {joined}/{desired} registered and unfenced with the controller"),
        ),
        (Err(e), true) => (
            "AdminUnreachable",
            format!("{ready}/{desired} brokers ready, but the admin API is unreachable: {e}"),
        ),
        (_, false) => ("BrokersStarting", format!("{ready}/{desired} brokers ready")),
    };
    let admin_reachable = registered.map(|_| ());
    vec![
        condition(previous, "Ready", all_ready, reason, &message, generation, now.clone()),
        condition(
            previous,
            "Progressing",
            ready < desired || (admin_reachable.is_ok() && joined < desired),
            reason,
            &message,
            generation,
            now.clone(),
        ),
        condition(
            previous,
            "Degraded",
            admin_reachable.is_err() && ready > 0,
            reason,
            &message,
            generation,
            now,
        ),
    ]
}

/// `RackAware` when the Cluster asks for rack awareness: True once every
/// broker that answered reports a rack, False naming the brokers without one
/// (their nodes lack the topology label). None without
/// `rack` in the spec or before any broker answered.
pub fn rack_condition(
    previous: &[Condition],
    topology_key: Option<&str>,
    broker_racks: &[(i32, String)],
    generation: Option<i64>,
    now: Time,
) -> Option<Condition> {
    let key = topology_key?;
    if broker_racks.is_empty() {
        return None;
    }
    let missing: Vec<String> = broker_racks
        .iter()
        .filter(|(_, rack)| rack.is_empty())
        .map(|(id, _)| id.to_string())
        .collect();
    Some(if missing.is_empty() {
        let mut racks: Vec<&str> = broker_racks.iter().map(|(_, r)| r.as_str()).collect();
        racks.sort_unstable();
        racks.dedup();
        condition(
            previous,
            "RackAware",
            true,
            "RacksAssigned",
            &format!("brokers span racks {} ({key})", racks.join(", ")),
            generation,
            now,
        )
    } else {
        condition(
            previous,
            "RackAware",
            false,
            "RackLabelMissing",
            &format!(
                "brokers {} have no rack: their nodes have no '{key}' label (a broker takes its node's \
                 label when it starts)",
                missing.join(", ")
            ),
            generation,
            now,
        )
    })
}

/// Bytes of a Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`, `1e9`); None when
/// it is not one.
pub fn quantity_bytes(q: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1_048_576f64),
        ("Gi", 1_073_741_824f64),
        ("Ti", 1_099_511_627_776f64),
        ("Pi", 1_125_899_906_842_624f64),
        ("Ei", 1_152_921_504_606_846_976f64),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let q = q.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| q.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((q, 1.0));
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * scale)
}

/// A broker's PersistentVolumeClaim as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeState {
    pub name: String,
    pub requested: String,
    /// None until the claim is bound.
    pub capacity: Option<String>,
}

/// The claims to patch to the desired size: those requesting less. A claim
/// never shrinks (Kubernetes cannot), so larger ones are left alone.
pub fn volumes_to_expand(desired_size: &str, volumes: &[VolumeState]) -> Vec<String> {
    let Some(desired) = quantity_bytes(desired_size) else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter(|v| quantity_bytes(&v.requested).is_some_and(|r| r < desired))
        .map(|v| v.name.clone())
        .collect()
}

/// The claims of brokers a scale-down removed (`data-<cluster>-<ordinal>`
/// with an ordinal at or past the StatefulSet's `replicas`), to delete when
/// `storage.deleteClaim` is set, as Strimzi does: the StatefulSet's own
/// retention policy needs a feature gate before Kubernetes 1.27. A claim
/// still mounted is kept by Kubernetes until its pod is gone.
pub fn claims_left_behind(cluster: &str, replicas: i32, volumes: &[VolumeState]) -> Vec<String> {
    let prefix = format!("data-{cluster}-");
    volumes
        .iter()
        .filter(|v| {
            v.name
                .strip_prefix(&prefix)
                .and_then(|ordinal| ordinal.parse::<i32>().ok())
                .is_some_and(|ordinal| ordinal >= replicas)
        })
        .map(|v| v.name.clone())
        .collect()
}

/// `VolumesExpanded`: True once every bound claim has at least the desired
/// capacity; False while a resize is pending, when the apiserver refused it
/// (the StorageClass does not allow expansion, or the claim is not bound),
/// when the spec asks for less than the volumes have, or names another class
/// than they were made with. None before any claim exists.
pub fn volume_condition(
    previous: &[Condition],
    desired_size: &str,
    volumes: &[VolumeState],
    refused: Option<&str>,
    class_change: Option<(&str, &str)>,
    generation: Option<i64>,
    now: Time,
) -> Option<Condition> {
    if volumes.is_empty() {
        return None;
    }
    let cond = |ok: bool, reason: &str, message: String| {
        Some(condition(
            previous,
            "VolumesExpanded",
            ok,
            reason,
            &message,
            generation,
            now.clone(),
        ))
    };
    // CEL refuses changing a set class; adding or removing one reaches here.
    if let Some((created, asked)) = class_change {
        return cond(
            false,
            "StorageClassFixed",
            format!("the volumes keep storage class {created:?}; {asked:?} is not applied"),
        );
    }
    let Some(desired) = quantity_bytes(desired_size) else {
        return cond(
            false,
            "InvalidSize",
            format!("storage.size {desired_size:?} is not a quantity"),
        );
    };
    if let Some(reason) = refused {
        return cond(
            false,
            "ExpansionRefused",
            format!("growing the volumes to {desired_size} was refused: {reason}"),
        );
    }
    let larger: Vec<&str> = volumes
        .iter()
        .filter(|v| quantity_bytes(&v.requested).is_some_and(|r| r > desired))
        .map(|v| v.name.as_str())
        .collect();
    if !larger.is_empty() {
        return cond(
            false,
            "ShrinkNotSupported",
            format!(
                "{} request more than {desired_size}; a volume cannot shrink",
                larger.join(", ")
            ),
        );
    }
    // An unbound claim is provisioned at its request; only bound ones wait for a resize.
    let waiting: Vec<&str> = volumes
        .iter()
        .filter(|v| {
            v.capacity
                .as_deref()
                .is_some_and(|c| quantity_bytes(c).is_none_or(|c| c < desired))
        })
        .map(|v| v.name.as_str())
        .collect();
    if waiting.is_empty() {
        cond(
            true,
            "VolumesAtSize",
            format!("{} volumes of {desired_size}", volumes.len()),
        )
    } else {
        cond(
            false,
            "Resizing",
            format!("waiting for {} to reach {desired_size}", waiting.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_claims_of_removed_brokers_are_left_behind() {
        let v = |name: &str| super::VolumeState {
            name: name.into(),
            requested: "1Gi".into(),
            capacity: None,
        };
        let volumes = [
            v("data-kafka-0"),
            v("data-kafka-2"),
            v("data-kafka-3"),
            v("data-kafka-10"),
            v("data-kafka-x-4"),
            v("data-other-5"),
        ];
        assert_eq!(
            super::claims_left_behind("kafka", 3, &volumes),
            vec!["data-kafka-3", "data-kafka-10"]
        );
        assert!(super::claims_left_behind("kafka", 11, &volumes).is_empty());
    }

    use super::*;
    use fjord_crds::{OffsetReset, ResetTo};
    use proptest::prelude::*;

    #[test]
    fn rack_awareness_is_reported_only_when_asked_for_and_names_brokers_without_a_rack() {
        let now = || Time(Default::default());
        let zone = Some("topology.kubernetes.io/zone");
        let racks = |r: &[(i32, &str)]| r.iter().map(|(id, r)| (*id, r.to_string())).collect::<Vec<_>>();
        assert_eq!(rack_condition(&[], None, &racks(&[(0, "")]), None, now()), None);
        assert_eq!(
            rack_condition(&[], zone, &[], None, now()),
            None,
            "no broker answered yet"
        );
        let ok = rack_condition(
            &[],
            zone,
            &racks(&[(0, "eu-1b"), (1, "eu-1a"), (2, "eu-1a")]),
            None,
            now(),
        )
        .unwrap();
        assert_eq!((ok.status.as_str(), ok.reason.as_str()), ("True", "RacksAssigned"));
        assert!(ok.message.contains("eu-1a, eu-1b"), "{}", ok.message);
        let missing = rack_condition(&[], zone, &racks(&[(0, "eu-1a"), (1, ""), (2, "")]), None, now()).unwrap();
        assert_eq!(
            (missing.status.as_str(), missing.reason.as_str()),
            ("False", "RackLabelMissing")
        );
        assert!(
            missing.message.starts_with("brokers 1, 2 have no rack"),
            "{}",
            missing.message
        );
    }

    fn spec(partitions: i32, replicas: i32, config: &[(&str, &str)]) -> TopicSpec {
        TopicSpec {
            cluster_ref: "c".into(),
            topic_name: None,
            partitions,
            replicas,
            config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn observed(partitions: i32, config: &[(&str, &str)]) -> ObservedTopic {
        ObservedTopic {
            partitions,
            replication_factor: 1,
            configs: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn creates_grows_and_reverts_drift() {
        assert!(matches!(
            plan_topic(&spec(3, 1, &[]), None, 1).unwrap()[0],
            TopicAction::Create { partitions: 3, .. }
        ));
        assert_eq!(
            plan_topic(&spec(3, 1, &[]), Some(&observed(3, &[])), 1).unwrap(),
            vec![]
        );
        assert_eq!(
            plan_topic(&spec(6, 1, &[]), Some(&observed(3, &[])), 1).unwrap(),
            vec![TopicAction::GrowPartitions { to: 6 }]
        );
        let drifted = plan_topic(
            &spec(3, 1, &[("retention.ms", "1000")]),
            Some(&observed(3, &[("retention.ms", "5"), ("segment.ms", "9")])),
            1,
        )
        .unwrap();
        let TopicAction::AlterConfigs {
            changes,
            reverted_drift,
        } = &drifted[0]
        else {
            panic!("{drifted:?}")
        };
        assert!(reverted_drift);
        assert_eq!(changes["retention.ms"].as_deref(), Some("1000"));
        assert_eq!(changes["segment.ms"], None);
        let first_set = plan_topic(&spec(3, 1, &[("retention.ms", "1000")]), Some(&observed(3, &[])), 1).unwrap();
        assert!(matches!(
            &first_set[0],
            TopicAction::AlterConfigs {
                reverted_drift: false,
                ..
            }
        ));
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        assert_eq!(
            plan_topic(&spec(2, 1, &[]), Some(&observed(4, &[])), 1),
            Err(Refusal::PartitionDecrease { current: 4, wanted: 2 })
        );
        assert_eq!(
            plan_topic(&spec(2, 3, &[]), None, 1),
            Err(Refusal::ReplicasAboveBrokers {
                replicas: 3,
                brokers: 1
            })
        );
        assert!(plan_topic(&spec(0, 1, &[]), None, 1).is_err());
    }

    #[test]
    fn oldest_claim_owns_the_topic() {
        let claims = vec![
            ("2026-11-02T00:00:00Z".to_string(), "ns/b".to_string()),
            ("2026-11-01T00:00:00Z".to_string(), "ns/a".to_string()),
        ];
        assert_eq!(topic_owner(&claims).unwrap().1, "ns/a");
    }

    #[test]
    fn a_failed_reset_makes_the_group_not_ready() {
        let at = Time(k8s_openapi::jiff::Timestamp::from_second(0).unwrap());
        assert!(group_ready(None).0);
        for (outcome, ready) in [
            (ResetOutcome::Done("reset".into()), true),
            (ResetOutcome::Retrying("leader of orders-0 down".into()), false),
            (ResetOutcome::Failed("topic 'x' does not exist".into()), false),
        ] {
            let (ok, reason, message) = outcome.condition();
            let c = condition(&[], "OffsetReset", ok, reason, message, Some(1), at.clone());
            let (is_ready, reason, text) = group_ready(Some(&c));
            assert_eq!(is_ready, ready, "{outcome:?}");
            if !ready {
                assert_eq!(reason, "OffsetResetFailed");
                assert!(text.contains(message), "{text}");
            }
        }
    }

    #[test]
    fn resets_run_once_and_only_on_empty_groups() {
        let mut spec = ConsumerGroupSpec {
            cluster_ref: "c".into(),
            group_id: "g".into(),
            offset_reset: None,
        };
        assert_eq!(reset_decision(&spec, None, 0), ResetDecision::None);
        spec.offset_reset = Some(OffsetReset {
            request_id: "r1".into(),
            to: ResetTo::Earliest,
            topics: vec!["t".into()],
            timestamp: None,
            offset: None,
        });
        assert_eq!(
            reset_decision(&spec, None, 2),
            ResetDecision::WaitForEmptyGroup { members: 2 }
        );
        assert_eq!(reset_decision(&spec, None, 0), ResetDecision::Run);
        let done = ConsumerGroupStatus {
            last_reset_request_id: Some("r1".into()),
            ..Default::default()
        };
        assert_eq!(reset_decision(&spec, Some(&done), 0), ResetDecision::None);
    }

    #[test]
    fn status_writes_only_what_changed_and_counters_at_most_once_a_refresh() {
        use serde_json::json;
        use std::time::Duration;
        let counters = ["lastUpdate", "lag", "totalLag", "logEndOffset"];
        let refresh = Duration::from_secs(15);
        let base =
            json!({"state": "Stable", "totalLag": 0, "partitions": [{"partition": 0, "lag": 0}], "lastUpdate": "a"});
        let same_but_time =
            json!({"state": "Stable", "totalLag": 0, "partitions": [{"partition": 0, "lag": 0}], "lastUpdate": "b"});
        let lag_moved =
            json!({"state": "Stable", "totalLag": 5, "partitions": [{"partition": 0, "lag": 5}], "lastUpdate": "b"});
        let state_moved =
            json!({"state": "Empty", "totalLag": 0, "partitions": [{"partition": 0, "lag": 0}], "lastUpdate": "b"});
        let just = Some(Duration::from_secs(1));
        assert!(
            !status_write_due(&base, &same_but_time, &counters, None, refresh),
            "nothing a user reads changed"
        );
        assert!(
            !status_write_due(&base, &lag_moved, &counters, just, refresh),
            "lag waits for the refresh"
        );
        assert!(status_write_due(&base, &lag_moved, &counters, Some(refresh), refresh));
        assert!(
            status_write_due(&base, &lag_moved, &counters, None, refresh),
            "first write after a start"
        );
        assert!(
            status_write_due(&base, &state_moved, &counters, just, refresh),
            "state is written at once"
        );
    }

    #[test]
    fn conditions_keep_transition_times() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap());
        let all = brokers(&[(0, false), (1, false), (2, false)]);
        let first = cluster_conditions(&[], 3, 1, Ok(&all), Some(1), t0.clone());
        assert_eq!(first[0].status, "False");
        let same = cluster_conditions(&first, 3, 2, Ok(&all), Some(1), t1.clone());
        assert_eq!(same[0].last_transition_time, t0, "still not ready: no transition");
        let ready = cluster_conditions(&same, 3, 3, Ok(&all), Some(1), t1.clone());
        assert_eq!(
            (ready[0].status.as_str(), ready[0].last_transition_time.clone()),
            ("True", t1)
        );
        let degraded = cluster_conditions(&ready, 3, 3, Err("timeout".into()), Some(1), t0);
        assert_eq!(degraded[2].status, "True");
        assert_eq!(degraded[0].reason, "AdminUnreachable");
    }

    fn brokers(list: &[(i32, bool)]) -> Vec<RegisteredBroker> {
        list.iter()
            .map(|&(id, fenced)| RegisteredBroker { id, fenced })
            .collect()
    }

    /// Three ready pods that form three clusters of one (each lists only
    /// itself), or one broker fenced, are not Ready.
    #[test]
    fn ready_needs_every_broker_registered_and_unfenced() {
        let t = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        for registered in [
            brokers(&[(0, false)]),
            brokers(&[(0, false), (1, true), (2, false)]),
            brokers(&[(0, false), (1, false), (7, false)]),
        ] {
            let c = cluster_conditions(&[], 3, 3, Ok(&registered), Some(1), t.clone());
            assert_eq!(
                (c[0].status.as_str(), c[0].reason.as_str()),
                ("False", "BrokersNotRegistered")
            );
            assert_eq!(c[1].status, "True", "still progressing");
        }
        let c = cluster_conditions(
            &[],
            3,
            3,
            Ok(&brokers(&[(0, false), (1, false), (2, false), (3, true)])),
            Some(1),
            t,
        );
        assert_eq!(
            c[0].status, "True",
            "a fenced broker beyond the expected ones does not count"
        );
    }

    proptest! {
        /// Whatever is observed, a plan never shrinks a topic and applying it reaches the spec.
        #[test]
        fn plans_converge(
            current in 1i32..50,
            wanted in 1i32..50,
            brokers in 1i32..6,
            replicas in 1i32..6,
            observed_rf in 1i32..6,
            keys in proptest::collection::btree_map("[a-c]", "[0-9]", 0..3),
            seen in proptest::collection::btree_map("[a-c]", "[0-9]", 0..3),
        ) {
            let spec = TopicSpec { cluster_ref: "c".into(), topic_name: None, partitions: wanted, replicas, config: keys.clone() };
            let obs = ObservedTopic { partitions: current, replication_factor: observed_rf, configs: seen };
            match plan_topic(&spec, Some(&obs), brokers) {
                // Each refusal exactly when its condition holds, checked in this order.
                Err(Refusal::ReplicasAboveBrokers { .. }) => prop_assert!(replicas > brokers),
                Err(Refusal::PartitionDecrease { .. }) => prop_assert!(replicas <= brokers && wanted < current),
                Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
                Ok(actions) => {
                    let mut after = obs.clone();
                    for a in actions {
                        match a {
                            TopicAction::GrowPartitions { to } => { prop_assert!(to > after.partitions); after.partitions = to; }
                            TopicAction::AlterConfigs { changes, .. } => for (k, v) in changes {
                                match v { Some(v) => { after.configs.insert(k, v); } None => { after.configs.remove(&k); } }
                            },
                            TopicAction::ChangeReplicationFactor { to } => { prop_assert!(to != after.replication_factor); after.replication_factor = to; }
                            TopicAction::Create { .. } => prop_assert!(false, "never create an existing topic"),
                        }
                    }
                    prop_assert!(replicas <= brokers, "planned only when feasible");
                    prop_assert_eq!(after.replication_factor, replicas);
                    prop_assert_eq!(after.partitions, wanted);
                    prop_assert_eq!(after.configs, keys);
                }
            }
        }
    }

    fn volume(name: &str, requested: &str, capacity: Option<&str>) -> VolumeState {
        VolumeState {
            name: name.into(),
            requested: requested.into(),
            capacity: capacity.map(String::from),
        }
    }

    #[test]
    fn quantities_compare_across_units() {
        assert_eq!(quantity_bytes("10Gi"), Some(10.0 * 1_073_741_824.0));
        assert_eq!(quantity_bytes("1.5Ki"), Some(1536.0));
        assert_eq!(quantity_bytes("2G"), Some(2e9));
        assert_eq!(quantity_bytes("1e3"), Some(1000.0));
        assert_eq!(quantity_bytes("12"), Some(12.0));
        assert_eq!(quantity_bytes("ten"), None);
        assert_eq!(quantity_bytes("-1Gi"), None);
        assert!(quantity_bytes("10737418240").unwrap() == quantity_bytes("10Gi").unwrap());
    }

    #[test]
    fn volumes_grow_and_report_until_bound_capacity_reaches_the_size() {
        let t = Time(Default::default());
        let small = [
            volume("data-c-0", "10Gi", Some("10Gi")),
            volume("data-c-1", "20Gi", Some("20Gi")),
        ];
        assert_eq!(volumes_to_expand("20Gi", &small), vec!["data-c-0".to_string()]);
        assert!(volumes_to_expand("10Gi", &small).is_empty(), "never shrinks");
        assert!(volumes_to_expand("garbage", &small).is_empty());
        let resizing = [
            volume("data-c-0", "20Gi", Some("10Gi")),
            volume("data-c-1", "20Gi", Some("21474836480")),
        ];
        let c = volume_condition(&[], "20Gi", &resizing, None, None, Some(2), t.clone()).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Resizing"));
        assert!(c.message.contains("data-c-0") && !c.message.contains("data-c-1"));
        let done = [
            volume("data-c-0", "20Gi", Some("20Gi")),
            volume("data-c-1", "20Gi", None),
        ];
        let c = volume_condition(&[], "20Gi", &done, None, None, Some(2), t.clone()).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "VolumesAtSize"));
        let c = volume_condition(
            &[],
            "20Gi",
            &done,
            Some("storageclass does not allow expansion"),
            None,
            None,
            t.clone(),
        )
        .unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "ExpansionRefused"));
        let c = volume_condition(&[], "5Gi", &done, None, None, None, t.clone()).unwrap();
        assert_eq!(c.reason, "ShrinkNotSupported");
        let c = volume_condition(&[], "20Gi", &done, None, Some(("", "fast")), None, t.clone()).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "StorageClassFixed"));
        assert!(volume_condition(&[], "5Gi", &[], None, None, None, t).is_none());
    }
}
