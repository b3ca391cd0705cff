//! The Kubernetes objects a `Cluster` should have: pure functions from the spec.

use std::collections::BTreeMap;

use fjord_crds::Cluster;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

pub const DATA_DIR: &str = "/var/lib/fjord";
pub const CONFIG_DIR: &str = "/etc/fjord";
pub const CONFIG_FILE: &str = "server.properties";
/// Where a broker pod mounts its cluster's rack map (one file per node).
pub const RACK_DIR: &str = "/etc/fjord-racks";
/// Annotation on the pod template with a hash of everything a broker pod is
/// made of (image, resources, probes, pod template overrides, the broker
/// config): a change marks pods as needing an operator-driven restart (the
/// StatefulSet is OnDelete, so nothing else would ever replace them).
pub const TEMPLATE_HASH_ANNOTATION: &str = "fjord.dev/template-hash";

/// Label selector of every object the operator makes (see [`labels`]).
pub const OWNED_SELECTOR: &str = "app.kubernetes.io/managed-by=fjord-operator";

pub fn labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "fjord".to_string()),
        ("app.kubernetes.io/component".to_string(), "broker".to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "fjord-operator".to_string()),
    ])
}

fn selector(cluster: &str) -> BTreeMap<String, String> {
    let mut l = labels(cluster);
    l.remove("app.kubernetes.io/managed-by");
    l
}

pub fn headless_service_name(cluster: &str) -> String {
    format!("{cluster}-brokers")
}

pub fn bootstrap_service_name(cluster: &str) -> String {
    format!("{cluster}-bootstrap")
}

/// The admin gRPC endpoint of a cluster's brokers: its own Service, so the
/// client bootstrap Service carries only the Kafka port.
pub fn admin_service_name(cluster: &str) -> String {
    format!("{cluster}-admin")
}

pub fn config_map_name(cluster: &str) -> String {
    format!("{cluster}-config")
}

pub fn rack_map_name(cluster: &str) -> String {
    format!("{cluster}-racks")
}

/// The rack map of a Cluster with `spec.rack`: every node's name to the value
/// of its topology label ("" when it has none). A broker reads its node's
/// entry at start-up as `broker.rack` (Strimzi reads the Node from an init
/// container instead; a mounted map needs no API access in the broker pods).
/// Not part of the template hash: nodes coming and going roll no broker.
pub fn rack_map(cluster: &Cluster, nodes: &[(String, BTreeMap<String, String>)]) -> Option<ConfigMap> {
    let key = &cluster.spec.rack.as_ref()?.topology_key;
    let data = nodes
        .iter()
        .map(|(node, labels)| (node.clone(), labels.get(key).cloned().unwrap_or_default()))
        .collect();
    Some(ConfigMap {
        metadata: meta(cluster, rack_map_name(&name(cluster))),
        data: Some(data),
        ..ConfigMap::default()
    })
}

/// The admin endpoint of a cluster from inside Kubernetes.
pub fn admin_endpoint(cluster: &Cluster) -> String {
    let ns = cluster.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    format!(
        "http://{}.{}.svc:{}",
        admin_service_name(&name(cluster)),
        ns,
        cluster.spec.listeners.admin
    )
}

/// A broker pod's node id: its StatefulSet ordinal (`my-cluster-2` is 2), as
/// the broker reads it (`--node-id-from-pod-name`).
pub fn pod_ordinal(pod_name: &str) -> Option<i32> {
    pod_name.rsplit_once('-')?.1.parse().ok().filter(|n: &i32| *n >= 0)
}

fn name(cluster: &Cluster) -> String {
    cluster.metadata.name.clone().unwrap_or_default()
}

fn owner(cluster: &Cluster) -> Vec<OwnerReference> {
    cluster.controller_owner_ref(&()).into_iter().collect()
}

fn meta(cluster: &Cluster, object_name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(object_name),
        namespace: cluster.metadata.namespace.clone(),
        labels: Some(labels(&name(cluster))),
        owner_references: Some(owner(cluster)),
        ..ObjectMeta::default()
    }
}

/// How many brokers (node ids 0..n-1) vote in the metadata quorum: as the
/// status recorded it when the cluster was created, else the first
/// `min(replicas, 3)`. Changing the voters of a running quorum by config
/// would let the new ones elect a leader of their own, so it never changes.
pub fn controller_voters(cluster: &Cluster) -> i32 {
    cluster
        .status
        .as_ref()
        .and_then(|s| s.controller_voters)
        .filter(|n| *n > 0)
        .unwrap_or_else(|| cluster.spec.replicas.clamp(1, 3))
}

/// `controller.quorum.voters`: each voter's admin listener by its pod's
/// stable DNS name behind the headless Service.
pub fn quorum_voters(cluster: &Cluster) -> String {
    let cluster_name = name(cluster);
    let ns = cluster.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let headless = headless_service_name(&cluster_name);
    let admin = cluster.spec.listeners.admin;
    (0..controller_voters(cluster))
        .map(|id| format!("{id}@{cluster_name}-{id}.{headless}.{ns}.svc:{admin}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `server.properties`: the user's static config over defaults for running
/// in a pod. Per-pod values (node id, advertised listener, rack) come from the
/// pod: the environment and the pod name. The dynamic configs are not here:
/// the brokers take them at run time from the metadata log (dynamic_config.rs),
/// so changing one changes neither this file nor the template hash.
pub fn broker_properties(cluster: &Cluster) -> String {
    let l = &cluster.spec.listeners;
    let mut props = BTreeMap::from([
        ("controller.quorum.voters".to_string(), quorum_voters(cluster)),
        ("listeners".to_string(), format!("PLAINTEXT://0.0.0.0:{}", l.kafka)),
        ("admin.listener".to_string(), format!("0.0.0.0:{}", l.admin)),
        ("metrics.listener".to_string(), format!("0.0.0.0:{}", l.metrics)),
        ("log.dirs".to_string(), format!("{DATA_DIR}/data")),
    ]);
    props.extend(crate::dynamic_config::static_configs(&cluster.spec.config));
    props.into_iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

pub fn config_map(cluster: &Cluster) -> ConfigMap {
    ConfigMap {
        metadata: meta(cluster, config_map_name(&name(cluster))),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), broker_properties(cluster))])),
        ..ConfigMap::default()
    }
}

/// FNV-1a: a stable hash (across operator versions and restarts, unlike
/// std's randomly keyed hashers) of the pod template and the broker config.
fn template_hash(template: &PodTemplateSpec, properties: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let rendered = serde_json::to_vec(template).unwrap_or_default();
    for b in rendered.iter().chain(properties.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The hash the broker pods of `cluster` should carry.
pub fn desired_template_hash(cluster: &Cluster, default_image: &str) -> String {
    stateful_set(cluster, default_image)
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|mut a| a.remove(TEMPLATE_HASH_ANNOTATION))
        .unwrap_or_default()
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        ..ServicePort::default()
    }
}

fn service_ports(cluster: &Cluster) -> Vec<ServicePort> {
    let l = &cluster.spec.listeners;
    vec![
        port("kafka", l.kafka),
        port("admin", l.admin),
        port("metrics", l.metrics),
    ]
}

/// Headless service: stable DNS per broker pod (`<pod>.<cluster>-brokers`).
pub fn headless_service(cluster: &Cluster) -> Service {
    Service {
        metadata: meta(cluster, headless_service_name(&name(cluster))),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector(&name(cluster))),
            ports: Some(service_ports(cluster)),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A ClusterIP Service over every broker of `cluster` with one port.
fn one_port_service(cluster: &Cluster, service_name: String, port_name: &str, number: i32) -> Service {
    Service {
        metadata: meta(cluster, service_name),
        spec: Some(ServiceSpec {
            selector: Some(selector(&name(cluster))),
            ports: Some(vec![port(port_name, number)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Bootstrap service: one address for clients' first connection, the Kafka port only.
pub fn bootstrap_service(cluster: &Cluster) -> Service {
    let service = bootstrap_service_name(&name(cluster));
    one_port_service(cluster, service, "kafka", cluster.spec.listeners.kafka)
}

/// Admin service: the operator's way to the admin gRPC API, apart from clients'.
pub fn admin_service(cluster: &Cluster) -> Service {
    let service = admin_service_name(&name(cluster));
    one_port_service(cluster, service, "admin", cluster.spec.listeners.admin)
}

pub fn pod_disruption_budget(cluster: &Cluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(cluster, name(cluster)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(&name(cluster))),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// Who may reach a cluster's admin port: the operator's pods (by namespace and
/// labels) and the cluster's own brokers. Kafka and metrics stay open.
pub fn network_policy(
    cluster: &Cluster,
    operator_namespace: &str,
    operator_labels: &BTreeMap<String, String>,
) -> NetworkPolicy {
    let l = &cluster.spec.listeners;
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    };
    let pods = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(pods(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            operator_namespace.to_string(),
        )]))),
        pod_selector: Some(pods(operator_labels.clone())),
        ..NetworkPolicyPeer::default()
    };
    let peers = NetworkPolicyPeer {
        pod_selector: Some(pods(selector(&name(cluster)))),
        ..NetworkPolicyPeer::default()
    };
    NetworkPolicy {
        metadata: meta(cluster, admin_service_name(&name(cluster))),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods(selector(&name(cluster)))),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(l.kafka), port(l.metrics)]),
                    from: None,
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(l.admin)]),
                    from: Some(vec![operator, peers]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The storage class a StatefulSet's data claims were made with ("" for the default).
pub fn claim_storage_class(set: &StatefulSet) -> String {
    set.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .and_then(|t| t.first())
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

/// A StatefulSet's claim templates cannot change after creation: keep the
/// existing ones (volumes grow by patching the claims themselves).
pub fn keep_claim_templates(desired: &mut StatefulSet, existing: &StatefulSet) {
    let existing = existing.spec.as_ref().and_then(|s| s.volume_claim_templates.clone());
    if let (Some(spec), Some(templates)) = (desired.spec.as_mut(), existing) {
        spec.volume_claim_templates = Some(
            templates
                .into_iter()
                .map(|t| PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: t.metadata.name,
                        labels: t.metadata.labels,
                        ..ObjectMeta::default()
                    },
                    spec: t.spec,
                    status: None,
                })
                .collect(),
        );
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, port: i32, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

pub fn stateful_set(cluster: &Cluster, default_image: &str) -> StatefulSet {
    let cluster_name = name(cluster);
    let ns = cluster.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let l = &cluster.spec.listeners;
    let overrides = cluster
        .spec
        .template
        .as_ref()
        .and_then(|t| t.pod.clone())
        .unwrap_or_default();
    let mut pod_labels = labels(&cluster_name);
    pod_labels.extend(overrides.labels.clone());
    let mut annotations = overrides.annotations.clone();
    if cluster.spec.metrics.enabled {
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), l.metrics.to_string());
    }
    let mut env_vars = vec![
        env_field("POD_NAME", "metadata.name"),
        env(
            "FJORD_ADVERTISED_LISTENERS",
            &format!(
                "PLAINTEXT://$(POD_NAME).{}.{ns}.svc:{}",
                headless_service_name(&cluster_name),
                l.kafka
            ),
        ),
    ];
    let mut command = vec![
        "/usr/local/bin/fjord-broker".to_string(),
        "--config".into(),
        format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        "--node-id-from-pod-name".into(),
        "$(POD_NAME)".into(),
        "--roles-from-voters".into(),
    ];
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(&cluster_name),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![
        VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    if cluster.spec.rack.is_some() {
        // broker.rack: this node's entry in the rack map (see [`rack_map`]).
        env_vars.push(env_field("NODE_NAME", "spec.nodeName"));
        command.extend(["--rack-from-file".into(), format!("{RACK_DIR}/$(NODE_NAME)")]);
        volumes.push(Volume {
            name: "racks".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: rack_map_name(&cluster_name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "racks".into(),
            mount_path: RACK_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let container = Container {
        name: "broker".into(),
        image: Some(cluster.spec.image.clone().unwrap_or_else(|| default_image.to_string())),
        // Node ids are the StatefulSet ordinals, read off the pod name (the
        // pod-index label needs Kubernetes 1.28); the voters also control.
        command: Some(command),
        env: Some(env_vars),
        ports: Some(vec![
            ContainerPort {
                name: Some("kafka".into()),
                container_port: l.kafka,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: l.admin,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: l.metrics,
                ..ContainerPort::default()
            },
        ]),
        volume_mounts: Some(mounts),
        // Log recovery after a crash may take long: liveness starts only once the
        // broker is up (up to an hour here), so it cannot kill a recovering broker in a loop.
        startup_probe: Some(Probe {
            period_seconds: Some(10),
            failure_threshold: Some(360),
            ..http_probe("/healthz", l.metrics, 0)
        }),
        liveness_probe: Some(http_probe("/healthz", l.metrics, 0)),
        readiness_probe: Some(http_probe("/readyz", l.metrics, 0)),
        resources: cluster.spec.resources.clone(),
        // The Pod Security "restricted" profile.
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let storage = &cluster.spec.storage;
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(selector(&cluster_name)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            affinity: overrides.affinity.clone(),
            tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
            image_pull_secrets: (!overrides.image_pull_secrets.is_empty())
                .then(|| overrides.image_pull_secrets.clone()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(10001),
                run_as_group: Some(10001),
                fs_group: Some(10001),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            termination_grace_period_seconds: Some(60),
            ..PodSpec::default()
        }),
    };
    let hash = template_hash(&template, &broker_properties(cluster));
    if let Some(annotations) = template.metadata.as_mut().and_then(|m| m.annotations.as_mut()) {
        annotations.insert(TEMPLATE_HASH_ANNOTATION.into(), hash);
    }
    StatefulSet {
        metadata: meta(cluster, cluster_name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(cluster.spec.replicas),
            service_name: Some(headless_service_name(&cluster_name)),
            // Brokers start together; restarts are driven one by one by the operator.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector(&cluster_name)),
                ..LabelSelector::default()
            },
            template,
            volume_claim_templates: Some(vec![claim]),
            // deleteClaim: the volumes go with the Cluster, or stay for a later one.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                // The claims of brokers a scale-down removed (drained first) go the same way.
                when_deleted: Some(if storage.delete_claim { "Delete" } else { "Retain" }.into()),
                when_scaled: Some(if storage.delete_claim { "Delete" } else { "Retain" }.into()),
            }),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_crds::{ClusterSpec, ClusterStatus};

    fn cluster(spec: serde_json::Value) -> Cluster {
        let spec: ClusterSpec = serde_json::from_value(spec).unwrap();
        let mut c = Cluster::new("events", spec);
        c.metadata.namespace = Some("prod".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    #[test]
    fn rack_map_names_each_nodes_zone() {
        let node = |name: &str, zone: Option<&str>| {
            let labels = zone.map(|z| ("topology.kubernetes.io/zone".to_string(), z.to_string()));
            (name.to_string(), labels.into_iter().collect::<BTreeMap<_, _>>())
        };
        let nodes = [node("node-a", Some("eu-1a")), node("node-b", None)];
        assert!(
            rack_map(&cluster(serde_json::json!({})), &nodes).is_none(),
            "no rack, no map"
        );
        let map = rack_map(&cluster(serde_json::json!({"rack": {}})), &nodes).unwrap();
        assert_eq!(map.metadata.name.as_deref(), Some("events-racks"));
        let data = map.data.unwrap();
        assert_eq!(data["node-a"], "eu-1a");
        assert_eq!(data["node-b"], "", "a node without the label: no rack");
        // Without a rack the pods mount no map and read no rack file.
        let sts = stateful_set(&cluster(serde_json::json!({})), "fjord:test");
        let pod = sts.spec.unwrap().template.spec.unwrap();
        assert!(pod.volumes.unwrap().iter().all(|v| v.name != "racks"));
        assert!(!pod.containers[0]
            .command
            .as_ref()
            .unwrap()
            .contains(&"--rack-from-file".to_string()));
    }

    #[test]
    fn statefulset_follows_the_spec() {
        let c = cluster(serde_json::json!({
            "replicas": 3,
            "storage": {"size": "50Gi", "storageClass": "fast"},
            "rack": {"topologyKey": "topology.kubernetes.io/zone"},
            "template": {"pod": {"annotations": {"team": "data"}}}
        }));
        let sts = stateful_set(&c, "fjord:test");
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.update_strategy.as_ref().unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        assert_eq!(spec.service_name.as_deref(), Some("events-brokers"));
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "50Gi"
        );
        let pod = spec.template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("fjord:test"));
        let env: Vec<&str> = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert!(env.contains(&"POD_NAME"));
        let command = container.command.as_ref().unwrap();
        assert!(command
            .windows(2)
            .any(|w| w == ["--node-id-from-pod-name", "$(POD_NAME)"]));
        assert!(command.contains(&"--roles-from-voters".to_string()));
        // broker.rack: the node's file in the rack map, named by the pod's node.
        let node = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "NODE_NAME")
            .unwrap();
        let field = node.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field.field_path, "spec.nodeName");
        assert!(command
            .windows(2)
            .any(|w| w == ["--rack-from-file", "/etc/fjord-racks/$(NODE_NAME)"]));
        let racks = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "racks")
            .unwrap();
        assert_eq!(racks.config_map.as_ref().unwrap().name, "events-racks");
        assert!(container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "racks" && m.mount_path == RACK_DIR));
        let advertised = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "FJORD_ADVERTISED_LISTENERS")
            .unwrap();
        assert_eq!(
            advertised.value.as_deref(),
            Some("PLAINTEXT://$(POD_NAME).events-brokers.prod.svc:9092")
        );
        let annotations = spec.template.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
        assert_eq!(annotations["team"], "data");
        assert!(annotations.contains_key(TEMPLATE_HASH_ANNOTATION));
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("Cluster", Some(true)));
    }

    #[test]
    fn config_overrides_defaults_and_changes_the_hash() {
        let a = cluster(serde_json::json!({"config": {"num.partitions": "6"}}));
        let b = cluster(serde_json::json!({"config": {"num.partitions": "12"}}));
        let props = broker_properties(&a);
        assert!(props.contains("num.partitions=6\n"));
        assert!(props.contains("listeners=PLAINTEXT://0.0.0.0:9092\n"));
        assert!(props.contains("log.dirs=/var/lib/fjord/data\n"));
        let hash = |c: &Cluster| desired_template_hash(c, "fjord:test");
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&a.clone()));
    }

    #[test]
    fn any_change_to_what_a_broker_pod_is_made_of_changes_the_template_hash() {
        let base = cluster(serde_json::json!({}));
        let hash = |c: &Cluster, image: &str| desired_template_hash(c, image);
        let h0 = hash(&base, "fjord:1");
        assert_ne!(h0, hash(&base, "fjord:2"), "the default image");
        for changed in [
            serde_json::json!({"image": "fjord:custom"}),
            serde_json::json!({"resources": {"limits": {"memory": "2Gi"}}}),
            serde_json::json!({"template": {"pod": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}}}),
            serde_json::json!({"template": {"pod": {"imagePullSecrets": [{"name": "registry"}]}}}),
            serde_json::json!({"config": {"num.partitions": "3"}}),
        ] {
            assert_ne!(h0, hash(&cluster(changed.clone()), "fjord:1"), "{changed}");
        }
        // Replicas and storage do not change what one pod is, once the
        // voters are recorded.
        let mut grown = cluster(serde_json::json!({"replicas": 5}));
        grown.status = Some(ClusterStatus {
            controller_voters: Some(1),
            ..ClusterStatus::default()
        });
        assert_eq!(h0, hash(&grown, "fjord:1"));
    }

    #[test]
    fn the_first_brokers_vote_and_the_voters_never_change() {
        let three = cluster(serde_json::json!({"replicas": 5}));
        assert_eq!(controller_voters(&three), 3);
        assert_eq!(
            quorum_voters(&three),
            "0@events-0.events-brokers.prod.svc:9093,1@events-1.events-brokers.prod.svc:9093,\
             2@events-2.events-brokers.prod.svc:9093"
        );
        assert!(broker_properties(&three).contains("controller.quorum.voters=0@events-0."));
        assert_eq!(controller_voters(&cluster(serde_json::json!({"replicas": 2}))), 2);
        // Created with one broker, scaled to five: still one voter.
        let mut scaled = cluster(serde_json::json!({"replicas": 5}));
        scaled.status = Some(ClusterStatus {
            controller_voters: Some(1),
            ..ClusterStatus::default()
        });
        assert_eq!(quorum_voters(&scaled), "0@events-0.events-brokers.prod.svc:9093");
        // The user's own voters win.
        let own = cluster(serde_json::json!({"config": {"controller.quorum.voters": "0@x:1"}}));
        assert!(broker_properties(&own).contains("controller.quorum.voters=0@x:1\n"));
    }

    #[test]
    fn pods_meet_the_restricted_profile_and_claims_follow_delete_claim() {
        let c = cluster(
            serde_json::json!({"storage": {"deleteClaim": true}, "template": {"pod": {"imagePullSecrets": [{"name": "registry"}]}}}),
        );
        let sts = stateful_set(&c, "fjord:test");
        let spec = sts.spec.as_ref().unwrap();
        let policy = spec.persistent_volume_claim_retention_policy.as_ref().unwrap();
        assert_eq!(policy.when_deleted.as_deref(), Some("Delete"));
        assert_eq!(policy.when_scaled.as_deref(), Some("Delete"));
        let kept = stateful_set(&cluster(serde_json::json!({})), "fjord:test");
        let policy = kept.spec.unwrap().persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "registry");
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let container = &pod.containers[0];
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        let startup = container.startup_probe.as_ref().unwrap();
        assert!(
            startup.period_seconds.unwrap() * startup.failure_threshold.unwrap() >= 3600,
            "an hour to recover logs"
        );
    }

    #[test]
    fn every_owned_object_matches_the_watch_selector() {
        let c = cluster(serde_json::json!({}));
        let (key, value) = OWNED_SELECTOR.split_once('=').unwrap();
        let metas = [
            stateful_set(&c, "fjord:test").metadata,
            config_map(&c).metadata,
            headless_service(&c).metadata,
            bootstrap_service(&c).metadata,
            admin_service(&c).metadata,
            pod_disruption_budget(&c).metadata,
        ];
        for m in metas {
            assert_eq!(m.labels.unwrap()[key], value, "{:?}", m.name);
        }
    }

    #[test]
    fn services_and_budget() {
        let c = cluster(serde_json::json!({}));
        let headless = headless_service(&c);
        assert_eq!(headless.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));
        let bootstrap = bootstrap_service(&c);
        let ports: Vec<i32> = bootstrap
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(ports, vec![9092], "clients reach Kafka only");
        let admin = admin_service(&c);
        let admin_ports: Vec<i32> = admin.spec.unwrap().ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(admin_ports, vec![9093]);
        let pdb = pod_disruption_budget(&c);
        assert_eq!(pdb.spec.as_ref().unwrap().max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(admin_endpoint(&c), "http://events-admin.prod.svc:9093");
    }

    #[test]
    fn admin_port_is_open_only_to_the_operator_and_the_brokers() {
        let c = cluster(serde_json::json!({"listeners": {"kafka": 19092, "admin": 19093, "metrics": 19644}}));
        let operator = BTreeMap::from([("app.kubernetes.io/component".to_string(), "operator".to_string())]);
        let policy = network_policy(&c, "fjord-system", &operator);
        let spec = policy.spec.unwrap();
        let rules = spec.ingress.unwrap();
        let ports = |r: &NetworkPolicyIngressRule| -> Vec<IntOrString> {
            r.ports.iter().flatten().filter_map(|p| p.port.clone()).collect()
        };
        assert_eq!(ports(&rules[0]), vec![IntOrString::Int(19092), IntOrString::Int(19644)]);
        assert!(rules[0].from.is_none(), "clients and scrapers come from anywhere");
        assert_eq!(ports(&rules[1]), vec![IntOrString::Int(19093)]);
        let from = rules[1].from.as_ref().unwrap();
        let ns = from[0]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(ns["kubernetes.io/metadata.name"], "fjord-system");
        assert_eq!(
            from[0].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap(),
            &operator
        );
        assert_eq!(
            from[1].pod_selector.as_ref().unwrap().match_labels,
            spec.pod_selector.unwrap().match_labels,
            "brokers reach each other's admin port"
        );
    }

    #[test]
    fn claim_templates_stay_as_created() {
        let old = stateful_set(&cluster(serde_json::json!({"storage": {"size": "10Gi"}})), "img");
        let mut new = stateful_set(&cluster(serde_json::json!({"storage": {"size": "20Gi"}})), "img");
        keep_claim_templates(&mut new, &old);
        assert_eq!(
            new.spec.unwrap().volume_claim_templates,
            old.spec.unwrap().volume_claim_templates
        );
    }
}
