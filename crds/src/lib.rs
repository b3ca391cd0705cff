//! Fjord's custom resources (`fjord.dev/v1alpha1`): `Cluster`, `Topic` and
//! `ConsumerGroup`. The CRD YAML in `crds/` and `helm/fjord/crds/` is
//! generated from these types by the `crdgen` binary.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "fjord.dev";
/// Annotation: `retain` keeps the Kafka topic when its Topic resource is deleted.
pub const DELETION_POLICY_ANNOTATION: &str = "fjord.dev/deletion-policy";
/// Annotation: `"true"` stops the operator from changing anything for the resource.
pub const PAUSE_ANNOTATION: &str = "fjord.dev/pause-reconciliation";

/// A Fjord cluster: brokers run as a StatefulSet the operator manages.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fjord.dev",
    version = "v1alpha1",
    kind = "Cluster",
    namespaced,
    status = "ClusterStatus",
    shortname = "fjc",
    category = "fjord",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyBrokers"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Number of brokers (node ids 0..replicas-1, the pod ordinals). Scaling
    /// down drains the brokers that go (the highest ordinals) through
    /// reassignment before their pods are removed; it is refused, with the
    /// `Scaling` condition, below the metadata quorum's voters (the first
    /// min(replicas, 3) brokers when the cluster was created: voters are never
    /// removed) or below a topic's replication factor.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 1").message("a cluster needs at least one broker"))]
    pub replicas: i32,
    /// Broker image; defaults to the operator's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Broker volumes. The size may grow (the operator expands the claims
    /// where the StorageClass allows it); the class is fixed once created.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Broker configuration (Kafka names). Static configs go into the broker
    /// ConfigMap and a change rolls the brokers; the cluster-wide dynamic
    /// broker configs Fjord applies at run time (log.retention.*, log.segment.*,
    /// min.insync.replicas, compression.type, message.max.bytes, the
    /// replication throttle rates...) are set through the admin API
    /// (IncrementalAlterConfigs on the default broker entity) without a
    /// restart. The Cluster owns those: a change made elsewhere is reverted.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Bytes per second each broker may send and receive for the replicas a
    /// reassignment adds (the operator's drains, rebalances and Topic
    /// replication-factor changes, and any other reassignment), as
    /// `kafka-reassign-partitions --throttle`: leader and follower
    /// `replication.throttled.rate`. Replication into the ISR is never
    /// throttled. Unset: reassignments copy as fast as they can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1024").message("the replication throttle is in bytes per second, at least 1024"))]
    pub replication_throttle: Option<i64>,
    /// Rack awareness: `broker.rack` from this node label of each broker's node
    /// (read at broker start-up from the `<name>-racks` ConfigMap, which the
    /// operator keeps with every node's label), and replicas spread across racks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<RackSpec>,
    #[serde(default)]
    pub listeners: ListenersSpec,
    #[serde(default)]
    pub metrics: MetricsSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateSpec>,
}

fn default_replicas() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each broker's volume, e.g. `10Gi`.
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// Fixed once the Cluster exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage.storageClass cannot be changed: a broker's volume keeps its class"))]
    pub storage_class: Option<String>,
    /// Delete a broker's volume when a scale-down removes it (the operator
    /// deletes its claim), and the brokers' volumes when the Cluster is
    /// deleted (the StatefulSet's claim retention policy, where Kubernetes
    /// enables it: 1.27 on).
    #[serde(default)]
    pub delete_claim: bool,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class: None,
            delete_claim: false,
        }
    }
}

fn default_storage_size() -> String {
    "10Gi".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RackSpec {
    #[serde(default = "default_topology_key")]
    pub topology_key: String,
}

fn default_topology_key() -> String {
    "topology.kubernetes.io/zone".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenersSpec {
    #[serde(default = "default_kafka_port")]
    pub kafka: i32,
    #[serde(default = "default_admin_port")]
    pub admin: i32,
    #[serde(default = "default_metrics_port")]
    pub metrics: i32,
}

impl Default for ListenersSpec {
    fn default() -> Self {
        ListenersSpec {
            kafka: default_kafka_port(),
            admin: default_admin_port(),
            metrics: default_metrics_port(),
        }
    }
}

fn default_kafka_port() -> i32 {
    9092
}
fn default_admin_port() -> i32 {
    9093
}
fn default_metrics_port() -> i32 {
    9644
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        MetricsSpec { enabled: true }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodTemplateOverrides>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Secrets for pulling the broker image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerEndpoint {
    pub id: i32,
    pub endpoint: String,
    /// `broker.rack` as the broker reports it; empty when it has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rack: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub ready_brokers: i32,
    #[serde(default)]
    pub brokers: Vec<BrokerEndpoint>,
    /// Bootstrap address for clients inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Each broker volume's requested size and the capacity it has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeStatus>,
    /// Brokers 0..n-1 are the metadata quorum's voters (combined
    /// broker and controller); the rest follow the quorum. Fixed when the
    /// cluster is first created, as Kafka's static controller.quorum.voters:
    /// scaling changes brokers, never the voters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_voters: Option<i32>,
    /// Partition reassignments in progress (drain, rebalance, replication
    /// factor changes): progress and an estimate of the time left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reassignment: Option<ReassignmentStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReassignmentStatus {
    /// When partitions started moving (RFC 3339).
    pub started_at: String,
    /// Partitions moving now.
    pub partitions_moving: i32,
    /// Partitions whose move finished since `startedAt`.
    pub partitions_done: i32,
    /// Bytes the moving partitions' new replicas copy in all (each
    /// partition's size at its leader, once per replica added).
    pub bytes_to_copy: i64,
    /// Seconds left: from the pace so far once a move finished (after 10 s
    /// of moving), else from `bytesToCopy` at the replication throttle;
    /// absent when neither is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_seconds_remaining: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// The PersistentVolumeClaim.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub requested: String,
    /// Empty until the claim is bound.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub capacity: String,
}

/// A Kafka topic on a Fjord cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fjord.dev",
    version = "v1alpha1",
    kind = "Topic",
    namespaced,
    status = "TopicStatus",
    shortname = "fjt",
    category = "fjord",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterRef"}"#,
    printcolumn = r#"{"name":"Partitions","type":"integer","jsonPath":".spec.partitions"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Name of the Cluster (same namespace) the topic lives on.
    pub cluster_ref: String,
    /// Kafka topic name; defaults to the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    /// Partition count; it can only grow.
    #[x_kube(validation = Rule::new("self >= oldSelf").message("partitions can only grow"))]
    #[x_kube(validation = Rule::new("self >= 1").message("a topic needs at least one partition"))]
    pub partitions: i32,
    /// Replication factor.
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// Topic configs (Kafka names). Changes made outside this resource are reverted.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PartitionSummary {
    pub partition: i32,
    /// The leader's broker id; -1 while the partition is offline.
    pub leader: i32,
    /// The replicas' broker ids, the preferred leader first.
    #[serde(default)]
    pub replicas: Vec<i32>,
    /// The in-sync replicas.
    #[serde(default)]
    pub isr: Vec<i32>,
    /// Offsets as the partition's leader has them (-1 when it did not answer).
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    /// Consumers read up to here: the offset below which every in-sync replica has the records.
    #[serde(default)]
    pub high_watermark: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, ResourceConflict, ...
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    #[serde(default)]
    pub partitions: Vec<PartitionSummary>,
}

/// Operations on a consumer group. Clients create groups; this resource
/// reports them and runs offset resets.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fjord.dev",
    version = "v1alpha1",
    kind = "ConsumerGroup",
    namespaced,
    status = "ConsumerGroupStatus",
    shortname = "fjcg",
    category = "fjord",
    printcolumn = r#"{"name":"Group","type":"string","jsonPath":".spec.groupId"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.members"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.totalLag"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroupSpec {
    pub cluster_ref: String,
    pub group_id: String,
    /// An offset reset to run once (per requestId) while the group is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_reset: Option<OffsetReset>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResetTo {
    Earliest,
    Latest,
    Timestamp,
    Offset,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.to != 'timestamp' || has(self.timestamp)").message("timestamp is required for to: timestamp"))]
#[x_kube(validation = Rule::new("self.to != 'offset' || has(self.offset)").message("offset is required for to: offset"))]
pub struct OffsetReset {
    /// Each distinct requestId runs once.
    pub request_id: String,
    pub to: ResetTo,
    pub topics: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct GroupPartitionStatus {
    pub topic: String,
    pub partition: i32,
    pub committed_offset: i64,
    pub log_end_offset: i64,
    pub lag: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default)]
    pub members: i32,
    #[serde(default)]
    pub partitions: Vec<GroupPartitionStatus>,
    #[serde(default)]
    pub total_lag: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
    /// The requestId of the last offset reset that ran (or failed for good).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset_request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset_outcome: Option<String>,
}

/// Every CRD, in a stable order, as YAML documents.
pub fn crd_yaml() -> Vec<(&'static str, String)> {
    let render = |crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
        let mut yaml = String::from("# Generated by `cargo run -p fjord-crds --bin crdgen`; do not edit.\n");
        yaml.push_str(&serde_yaml::to_string(&crd).expect("CRDs serialize"));
        yaml
    };
    vec![
        ("clusters.fjord.dev.yaml", render(Cluster::crd())),
        ("topics.fjord.dev.yaml", render(Topic::crd())),
        ("consumergroups.fjord.dev.yaml", render(ConsumerGroup::crd())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn crds_have_names_categories_and_rules() {
        let topic = serde_json::to_string(&Topic::crd()).unwrap();
        assert!(topic.contains(r#""shortNames":["fjt"]"#));
        assert!(topic.contains(r#""categories":["fjord"]"#));
        assert!(
            topic.contains(r#""rule":"self >= oldSelf""#),
            "partitions may only grow (CEL)"
        );
        let cluster = serde_json::to_string(&Cluster::crd()).unwrap();
        assert!(cluster.contains(r#""subresources":{"status":{}}"#));
        let class = &serde_json::to_value(Cluster::crd()).unwrap()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            ["properties"]["spec"]["properties"]["storage"]["properties"]["storageClass"];
        assert_eq!(
            class["x-kubernetes-validations"][0]["rule"], "self == oldSelf",
            "the storage class is fixed (CEL): {class}"
        );
        assert_eq!(class["maxLength"], 253, "bounded, so the rule's cost estimate fits");
    }

    #[test]
    fn specs_default_like_the_docs_say() {
        let c: ClusterSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(
            (
                c.replicas,
                c.storage.size.as_str(),
                c.listeners.kafka,
                c.metrics.enabled
            ),
            (1, "10Gi", 9092, true)
        );
        let t: TopicSpec = serde_json::from_str(r#"{"clusterRef":"c","partitions":3}"#).unwrap();
        assert_eq!((t.replicas, t.topic_name), (1, None));
    }

    /// The checked-in YAML must be what crdgen writes today.
    #[test]
    fn checked_in_crds_match_the_types() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for dir in [root.join("crds"), root.join("helm/fjord/crds")] {
            for (file, yaml) in crd_yaml() {
                let on_disk = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
                assert!(
                    on_disk == yaml,
                    "{} is out of date: run `cargo run -p fjord-crds --bin crdgen`",
                    dir.join(file).display()
                );
            }
        }
    }
}
