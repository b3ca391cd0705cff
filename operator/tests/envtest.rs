//! The operator against a real kube-apiserver and etcd (envtest style).
//!
//! Looks for `kube-apiserver` and `etcd` under `$FJORD_KUBE_ASSETS` or on
//! PATH and skips with the reason when they are absent. With them it starts
//! both on free loopback ports, installs the CRDs, runs the operator in
//! process against a broker process (its admin endpoint overridden, as when
//! the operator runs outside a cluster), and checks what users see: owned
//! objects and status of a Cluster; dynamic configs applied to the running
//! broker without a template change; a Topic created, grown, reconfigured and
//! deleted; refusals of invalid resources; a ConsumerGroup offset reset that a
//! librdkafka member resumes from; a server-side dry run of the whole chart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fjord_crds::{Cluster, ConsumerGroup, Topic};
use fjord_e2e::{free_port, BrokerProcess};
use fjord_operator::{metrics::Metrics, OperatorConfig};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use serde::Deserialize;

fn find(binary: &str) -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("FJORD_KUBE_ASSETS") {
        let p = Path::new(&dir).join(binary);
        if p.exists() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(binary))
            .find(|p| p.exists())
    })
}

struct Procs(Vec<Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts etcd and kube-apiserver; returns a client with admin rights.
async fn start_control_plane(dir: &Path, etcd: &Path, apiserver: &Path, procs: &mut Procs) -> Client {
    let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
    procs.0.push(
        Command::new(etcd)
            .args(["--name", "envtest", "--data-dir"])
            .arg(dir.join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client_port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client_port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-cluster=envtest=http://127.0.0.1:{peer_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts"),
    );
    run(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(dir.join("sa.key"))
        .arg("2048"));
    run(Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(dir.join("sa.key"))
        .arg("-out")
        .arg(dir.join("sa.pub")));
    std::fs::write(
        dir.join("tokens.csv"),
        "fjord-envtest-token,admin,admin,system:masters\n",
    )
    .unwrap();
    procs.0.push(
        Command::new(apiserver)
            .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", dir.join("sa.pub").display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ))
            .arg(format!("--token-auth-file={}", dir.join("tokens.csv").display()))
            .arg("--authorization-mode=AlwaysAllow")
            .arg("--service-cluster-ip-range=10.96.0.0/24")
            .arg("--disable-admission-plugins=ServiceAccount")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kube-apiserver starts"),
    );
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: fjord-envtest-token\ncontexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: admin\ncurrent-context: envtest\n"
    );
    std::fs::write(dir.join("kubeconfig"), kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(dir.join("kubeconfig")).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = Client::try_from(config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while client.apiserver_version().await.is_err() {
        assert!(Instant::now() < deadline, "kube-apiserver did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The StatefulSet and disruption controllers: real pods (Pending, with no
    // kubelet) from the operator's StatefulSet, and a computed PDB status.
    match find("kube-controller-manager") {
        Some(manager) => procs.0.push(
            Command::new(manager)
                .arg(format!("--kubeconfig={}", dir.join("kubeconfig").display()))
                .args(["--controllers=statefulset,disruption", "--leader-elect=false"])
                .args(["--bind-address=127.0.0.1", "--secure-port=0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("kube-controller-manager starts"),
        ),
        None => fjord_e2e::skip(
            "operator_against_a_real_apiserver (pods and PDB status)",
            "kube-controller-manager is not under $FJORD_KUBE_ASSETS or on PATH",
        ),
    }
    client
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, f: impl FnMut() -> F) -> T {
    eventually_within(what, Duration::from_secs(60), f).await
}

async fn eventually_within<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_against_a_real_apiserver() {
    let (Some(etcd), Some(apiserver)) = (find("etcd"), find("kube-apiserver")) else {
        fjord_e2e::skip(
            "operator_against_a_real_apiserver",
            &format!(
                "needs the kube-apiserver and etcd binaries under $FJORD_KUBE_ASSETS or on PATH \
                 (etcd: found {:?}, kube-apiserver: found {:?})",
                find("etcd"),
                find("kube-apiserver")
            ),
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut procs = Procs(Vec::new());
    let client = start_control_plane(tmp.path(), &etcd, &apiserver, &mut procs).await;

    // CRDs, then a namespace.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [Cluster::crd(), Topic::crd(), ConsumerGroup::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "envtest"}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let topics: Api<Topic> = Api::namespaced(client.clone(), "envtest");
    eventually("CRDs served", || async { topics.list(&Default::default()).await.ok() }).await;

    // A broker process the operator reaches through the override.
    let broker = BrokerProcess::start(&tmp.path().join("broker"), &[]);
    let config = OperatorConfig {
        broker_image: "fjord:envtest".into(),
        admin_endpoint_override: Some(format!("http://{}", broker.admin)),
        watch_namespaces: vec![],
        leader_election: false,
        lease_name: "fjord-operator".into(),
        namespace: "envtest".into(),
        pod_name: "envtest-operator".into(),
        metrics_addr: "127.0.0.1:0".into(),
        network_policy: true,
        operator_labels: [("app.kubernetes.io/component".to_string(), "operator".to_string())].into(),
    };
    let metrics = Metrics::new();
    metrics.leader.set(1);
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_server = tokio::spawn(fjord_operator::metrics::serve(
        metrics_addr.to_string(),
        metrics.clone(),
    ));
    let counters = metrics.clone();
    let operator = tokio::spawn(fjord_operator::run(client.clone(), config, metrics));

    // Cluster -> owned objects and status; its volumes' class allows expansion.
    let class: StorageClass = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "expandable"}, "provisioner": "example.com/none", "allowVolumeExpansion": true
    }))
    .unwrap();
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), "envtest");
    let cluster: Cluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "fjord.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": "demo"},
        "spec": {"replicas": 1, "storage": {"size": "1Gi", "storageClass": "expandable"}}
    }))
    .unwrap();
    clusters.create(&PostParams::default(), &cluster).await.unwrap();
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "envtest");
    let set = eventually("the StatefulSet", || async { sts.get_opt("demo").await.ok().flatten() }).await;
    assert_eq!(set.metadata.owner_references.unwrap()[0].kind, "Cluster");
    let services: Api<Service> = Api::namespaced(client.clone(), "envtest");
    assert!(services.get_opt("demo-brokers").await.unwrap().is_some());
    let bootstrap = services
        .get_opt("demo-bootstrap")
        .await
        .unwrap()
        .expect("bootstrap Service");
    let ports: Vec<i32> = bootstrap.spec.unwrap().ports.unwrap().iter().map(|p| p.port).collect();
    assert_eq!(
        ports,
        vec![9092],
        "the admin port is not on the client bootstrap Service"
    );
    assert!(services.get_opt("demo-admin").await.unwrap().is_some());
    assert!(Api::<ConfigMap>::namespaced(client.clone(), "envtest")
        .get_opt("demo-config")
        .await
        .unwrap()
        .is_some());
    rack_map(&client, &clusters).await;
    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), "envtest")
        .get_opt("demo-admin")
        .await
        .unwrap()
        .expect("the admin port's NetworkPolicy");
    let admin_rule = &policy.spec.unwrap().ingress.unwrap()[1];
    assert_eq!(
        admin_rule.from.as_ref().map(Vec::len),
        Some(2),
        "operator and brokers only"
    );
    let budgets = Api::<PodDisruptionBudget>::namespaced(client.clone(), "envtest");
    assert!(budgets.get_opt("demo").await.unwrap().is_some());
    if find("kube-controller-manager").is_some() {
        // The StatefulSet controller made the broker pod from the operator's template.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "envtest");
        let pod = eventually("the broker pod", || async {
            pods.get_opt("demo-0").await.ok().flatten()
        })
        .await;
        assert_eq!(pod.labels()["app.kubernetes.io/instance"], "demo");
        assert_eq!(pod.owner_references()[0].kind, "StatefulSet");
        assert!(pod.annotations().contains_key("fjord.dev/template-hash"));
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.security_context.and_then(|s| s.seccomp_profile).map(|p| p.type_),
            Some("RuntimeDefault".to_string()),
            "the restricted profile reaches the pod"
        );
        // The disruption controller computed the budget: one pod expected, none ready to lose.
        let status = eventually("the PDB status", || async {
            budgets
                .get_opt("demo")
                .await
                .ok()
                .flatten()
                .and_then(|b| b.status)
                .filter(|s| s.expected_pods == 1)
        })
        .await;
        assert_eq!(status.disruptions_allowed, 0, "a Pending broker may not be disrupted");

        // No kubelet: report the pod Running and Ready as one would. The
        // StatefulSet controller counts it, and the Cluster becomes Ready.
        pods.patch_status(
            "demo-0",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}
            ]}})),
        )
        .await
        .unwrap();
        let ready = eventually("Cluster Ready=True", || async {
            cluster_condition(&clusters, "Ready")
                .await
                .filter(|c| c.status == "True")
        })
        .await;
        assert_eq!(ready.reason, "AllBrokersReady");
        storage_changes(&client, &clusters).await;
    } else {
        eventually("Cluster status conditions", || async {
            cluster_condition(&clusters, "Ready").await
        })
        .await;
    }

    // Topic -> created on the broker, grown, reconfigured; shrinking is refused by the apiserver.
    let topic: Topic = serde_json::from_value(serde_json::json!({
        "apiVersion": "fjord.dev/v1alpha1", "kind": "Topic", "metadata": {"name": "orders"},
        "spec": {"clusterRef": "demo", "partitions": 2, "config": {"retention.ms": "3600000"}}
    }))
    .unwrap();
    topics.create(&PostParams::default(), &topic).await.unwrap();
    let admin = fjord_proto::admin::v1::admin_client::AdminClient::connect(format!("http://{}", broker.admin))
        .await
        .unwrap();
    let describe = |admin: &fjord_proto::admin::v1::admin_client::AdminClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .describe_topic(fjord_proto::admin::v1::DescribeTopicRequest { name: "orders".into() })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    };
    eventually("topic created", || describe(&admin)).await;
    topics
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"partitions": 4}})),
        )
        .await
        .unwrap();
    eventually("topic grown", || async {
        describe(&admin).await.filter(|t| t.partitions == 4)
    })
    .await;
    topics
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"config": {"retention.ms": "7200000"}}})),
        )
        .await
        .unwrap();
    eventually("topic reconfigured", || async {
        describe(&admin)
            .await
            .filter(|t| t.configs.get("retention.ms").map(String::as_str) == Some("7200000"))
    })
    .await;
    // An out-of-band change to a managed config is reverted on the next resync (every 60 s).
    admin
        .clone()
        .alter_topic_configs(fjord_proto::admin::v1::AlterTopicConfigsRequest {
            name: "orders".into(),
            ops: vec![fjord_proto::admin::v1::ConfigOp {
                name: "retention.ms".into(),
                op: fjord_proto::admin::v1::config_op::Op::Set as i32,
                value: Some("1000".into()),
            }],
            validate_only: false,
        })
        .await
        .unwrap();
    eventually_within("drift reverted", Duration::from_secs(90), || async {
        describe(&admin)
            .await
            .filter(|t| t.configs.get("retention.ms").map(String::as_str) == Some("7200000"))
    })
    .await;
    let shrink = topics
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"partitions": 1}})),
        )
        .await;
    match shrink {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 422 && e.message.contains("partitions can only grow"),
            "the CEL rule refuses fewer partitions: {e:?}"
        ),
        other => panic!("the CEL rule refuses fewer partitions: {other:?}"),
    }

    // Invalid: replicas above brokers, unknown cluster -> conditions, nothing created.
    for (name, spec) in [
        (
            "too-many-replicas",
            serde_json::json!({"clusterRef": "demo", "partitions": 1, "replicas": 3}),
        ),
        (
            "no-cluster",
            serde_json::json!({"clusterRef": "missing", "partitions": 1}),
        ),
    ] {
        let t: Topic = serde_json::from_value(serde_json::json!({
            "apiVersion": "fjord.dev/v1alpha1", "kind": "Topic", "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        topics.create(&PostParams::default(), &t).await.unwrap();
        let reason = eventually("a refusal condition", || async {
            topics.get(name).await.ok().and_then(|t| t.status).and_then(|s| {
                s.conditions
                    .first()
                    .filter(|c| c.status == "False")
                    .map(|c| c.reason.clone())
            })
        })
        .await;
        let expected = if name == "no-cluster" {
            "ClusterNotFound"
        } else {
            "ReplicasAboveBrokers"
        };
        assert_eq!(reason, expected, "{name}");
    }

    // Quiet now: a status write must not start the next reconcile in a loop.
    let reconciles = || ["cluster", "topic"].map(|c| counters.reconciliations.with_label_values(&[c]).get());
    let before = reconciles();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = reconciles();
    for (i, controller) in ["cluster", "topic"].iter().enumerate() {
        let delta = after[i] - before[i];
        assert!(delta <= 4, "{controller}: {delta} reconciles in 30 s of quiet");
    }

    // Deleting the resource deletes the topic through the finalizer.
    topics.delete("orders", &DeleteParams::default()).await.unwrap();
    eventually("topic deleted", || async {
        describe(&admin).await.is_none().then_some(())
    })
    .await;
    eventually("resource gone", || async {
        topics.get_opt("orders").await.ok().flatten().is_none().then_some(())
    })
    .await;
    consumer_group_reset(&client, &broker).await;
    chart_dry_run(&client).await;
    operator_dashboard_has_data(tmp.path(), metrics_addr).await;
    // Last: its static config change starts a roll.
    dynamic_configs(&clusters, &sts, &broker).await;
    operator.abort();
    metrics_server.abort();
}

/// The broker's config `name` and its source as a Kafka client (librdkafka's
/// DescribeConfigs of broker 0) sees them.
async fn broker_config(broker: &BrokerProcess, name: &str) -> Option<(String, &'static str)> {
    use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
    let admin: AdminClient<_> = kafka_config(broker).create().ok()?;
    let results = admin
        .describe_configs(&[ResourceSpecifier::Broker(0)], &AdminOptions::new())
        .await
        .ok()?;
    let resource = results.into_iter().next()?.ok()?;
    let entry = resource.get(name)?;
    let source = match entry.source {
        ConfigSource::DynamicDefaultBroker => "dynamic default broker",
        ConfigSource::Default => "default",
        _ => "other",
    };
    Some((entry.value.clone()?, source))
}

/// Dynamic configs and the replication throttle change on the running
/// brokers (AlterBrokerConfigs) and leave the pod template alone; a static
/// config changes the template (a roll).
async fn dynamic_configs(clusters: &Api<Cluster>, sts: &Api<StatefulSet>, broker: &BrokerProcess) {
    let template_hash = |set: StatefulSet| {
        set.spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|mut a| a.remove("fjord.dev/template-hash"))
            .expect("a template hash")
    };
    let before = template_hash(sts.get("demo").await.unwrap());
    clusters
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {
                "config": {"log.retention.ms": "172800000"}, "replicationThrottle": 10485760
            }})),
        )
        .await
        .unwrap();
    for (name, value) in [
        ("log.retention.ms", "172800000"),
        ("leader.replication.throttled.rate", "10485760"),
        ("follower.replication.throttled.rate", "10485760"),
    ] {
        let seen = eventually(&format!("{name}={value} on the running broker"), || async {
            broker_config(broker, name).await.filter(|(v, _)| v == value)
        })
        .await;
        assert_eq!(seen.1, "dynamic default broker", "{name}");
    }
    assert_eq!(
        template_hash(sts.get("demo").await.unwrap()),
        before,
        "a dynamic config changed the pod template (a restart)"
    );
    // What a person reads: an event saying what changed (as `kubectl get events` lists it).
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(clusters.clone().into_client(), "envtest");
    let event_says = |text: &'static str| {
        let events = events.clone();
        async move {
            let selector = "involvedObject.name=demo,reason=DynamicConfig";
            let listed = events
                .list(&kube::api::ListParams::default().fields(selector))
                .await
                .ok()?;
            listed
                .items
                .into_iter()
                .find(|e| e.message.as_deref().is_some_and(|m| m.contains(text)))
        }
    };
    eventually("a DynamicConfig event", || event_says("log.retention.ms=172800000")).await;
    // Removed from the Cluster: removed from the brokers, back to the default.
    clusters
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"config": {"log.retention.ms": null}}})),
        )
        .await
        .unwrap();
    eventually("log.retention.ms back to its default", || async {
        broker_config(broker, "log.retention.ms")
            .await
            .filter(|(v, source)| v == "604800000" && *source == "default")
    })
    .await;
    // Another change is another event, not a repeat of the first.
    eventually("a second DynamicConfig event", || {
        event_says("removed log.retention.ms")
    })
    .await;
    // A static config is the file's: the template changes and the brokers roll.
    clusters
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"config": {"replica.lag.time.max.ms": "20000"}}})),
        )
        .await
        .unwrap();
    eventually("a static config changes the template", || async {
        sts.get("demo").await.ok().map(template_hash).filter(|h| *h != before)
    })
    .await;
}

/// A rack-aware Cluster gets a rack map of the nodes' zone labels, kept
/// current as nodes come; its pods mount it and read their node's entry.
async fn rack_map(client: &Client, clusters: &Api<Cluster>) {
    use k8s_openapi::api::core::v1::Node;
    let nodes = Api::<Node>::all(client.clone());
    let node = |name: &str, zone: Option<&str>| -> Node {
        let labels: std::collections::BTreeMap<String, String> = zone
            .map(|z| ("topology.kubernetes.io/zone".to_string(), z.to_string()))
            .into_iter()
            .collect();
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    };
    nodes
        .create(&PostParams::default(), &node("node-a", Some("zone-a")))
        .await
        .unwrap();
    nodes
        .create(&PostParams::default(), &node("node-b", None))
        .await
        .unwrap();
    let racked: Cluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "fjord.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": "racked"},
        "spec": {"replicas": 1, "rack": {}}
    }))
    .unwrap();
    clusters.create(&PostParams::default(), &racked).await.unwrap();
    let maps = Api::<ConfigMap>::namespaced(client.clone(), "envtest");
    let data = |m: ConfigMap| m.data.unwrap_or_default();
    let map = eventually("the rack map of both nodes", || async {
        maps.get_opt("racked-racks")
            .await
            .ok()
            .flatten()
            .map(data)
            .filter(|d| d.len() == 2)
    })
    .await;
    assert_eq!((map["node-a"].as_str(), map["node-b"].as_str()), ("zone-a", ""));
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "envtest");
    let set = eventually("racked's StatefulSet", || async {
        sts.get_opt("racked").await.ok().flatten()
    })
    .await;
    let pod = set.spec.unwrap().template.spec.unwrap();
    assert!(pod
        .volumes
        .unwrap()
        .iter()
        .any(|v| v.config_map.as_ref().is_some_and(|c| c.name == "racked-racks")));
    // A node that joins later is in the map at the next reconcile (a change to the Cluster here).
    nodes
        .create(&PostParams::default(), &node("node-c", Some("zone-c")))
        .await
        .unwrap();
    clusters
        .patch(
            "racked",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    eventually("node-c in the rack map", || async {
        maps.get_opt("racked-racks")
            .await
            .ok()
            .flatten()
            .map(data)
            .filter(|d| d.get("node-c").is_some_and(|z| z == "zone-c"))
    })
    .await;
    clusters.delete("racked", &DeleteParams::default()).await.unwrap();
    for n in ["node-a", "node-b", "node-c"] {
        nodes.delete(n, &DeleteParams::default()).await.unwrap();
    }
}

async fn cluster_condition(clusters: &Api<Cluster>, type_: &str) -> Option<Condition> {
    let status = clusters.get("demo").await.ok()?.status?;
    status.conditions.into_iter().find(|c| c.type_ == type_)
}

/// The storage class is fixed (CEL); a larger size grows the claims once they
/// are bound, with the progress in status.
async fn storage_changes(client: &Client, clusters: &Api<Cluster>) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "envtest");
    let claim = eventually("the broker's claim", || async {
        claims.get_opt("data-demo-0").await.ok().flatten()
    })
    .await;
    assert_eq!(claim.spec.unwrap().storage_class_name.as_deref(), Some("expandable"));
    let class_change = clusters
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"storage": {"storageClass": "other"}}})),
        )
        .await;
    match class_change {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 422 && e.message.contains("storageClass cannot be changed"),
            "the CEL rule refuses a new storage class: {e:?}"
        ),
        other => panic!("the CEL rule refuses a new storage class: {other:?}"),
    }
    let grow = |size: &'static str| async move {
        clusters
            .patch(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"storage": {"size": size}}})),
            )
            .await
            .unwrap()
    };
    let touch = |n: u32| async move {
        clusters
            .patch(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"envtest/touch": n.to_string()}}})),
            )
            .await
            .unwrap();
    };
    // An unbound claim cannot grow: the apiserver's refusal is in status.
    grow("2Gi").await;
    let refused = eventually("VolumesExpanded=False (refused)", || async {
        cluster_condition(clusters, "VolumesExpanded")
            .await
            .filter(|c| c.reason == "ExpansionRefused")
    })
    .await;
    assert!(refused.message.contains("data-demo-0"), "{}", refused.message);
    // Bind it (no volume controller runs here), then it grows.
    let bound = |capacity: &'static str| serde_json::json!({"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": capacity}}});
    claims
        .patch_status("data-demo-0", &PatchParams::default(), &Patch::Merge(bound("1Gi")))
        .await
        .unwrap();
    touch(1).await;
    eventually("the claim requests 2Gi", || async {
        let c = claims.get("data-demo-0").await.ok()?;
        let requested = c.spec?.resources?.requests?.get("storage")?.0.clone();
        (requested == "2Gi").then_some(())
    })
    .await;
    let resizing = eventually("VolumesExpanded=False (resizing)", || async {
        cluster_condition(clusters, "VolumesExpanded")
            .await
            .filter(|c| c.reason == "Resizing")
    })
    .await;
    assert_eq!(resizing.status, "False");
    claims
        .patch_status("data-demo-0", &PatchParams::default(), &Patch::Merge(bound("2Gi")))
        .await
        .unwrap();
    touch(2).await;
    eventually("VolumesExpanded=True", || async {
        cluster_condition(clusters, "VolumesExpanded")
            .await
            .filter(|c| c.status == "True")
    })
    .await;
    let status = clusters.get("demo").await.unwrap().status.unwrap();
    assert_eq!(
        (
            status.volumes[0].requested.as_str(),
            status.volumes[0].capacity.as_str()
        ),
        ("2Gi", "2Gi")
    );
    // The StatefulSet still applies (its claim template is kept as created).
    assert_eq!(
        status.observed_generation,
        clusters.get("demo").await.unwrap().metadata.generation
    );
    // Dropping the class (CEL compares only two set values) is reported, not applied.
    let set_class = |class: serde_json::Value| async move {
        clusters
            .patch(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"storage": {"storageClass": class}}})),
            )
            .await
            .unwrap();
    };
    set_class(serde_json::Value::Null).await;
    eventually("VolumesExpanded=False (class fixed)", || async {
        cluster_condition(clusters, "VolumesExpanded")
            .await
            .filter(|c| c.reason == "StorageClassFixed")
    })
    .await;
    set_class("expandable".into()).await;
    eventually("VolumesExpanded=True again", || async {
        cluster_condition(clusters, "VolumesExpanded")
            .await
            .filter(|c| c.status == "True")
    })
    .await;
}

/// Every panel of the Operator dashboard returns data from a real Prometheus
/// scraping the operator that just ran the scenarios above.
async fn operator_dashboard_has_data(dir: &Path, metrics: std::net::SocketAddr) {
    use fjord_e2e::prometheus::{Prometheus, Target};
    if !Prometheus::available() {
        return fjord_e2e::skip(
            "operator_against_a_real_apiserver (operator dashboard)",
            "the prometheus binary is needed (apt-get install prometheus)",
        );
    }
    let dir = dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/fjord/dashboards/operator.json");
    tokio::task::spawn_blocking(move || {
        let prom = Prometheus::start(
            &dir,
            &[Target {
                job: "fjord-operator",
                addr: metrics,
                labels: &[("namespace", "envtest"), ("pod", "envtest-operator")],
            }],
        );
        // rate() needs several scrapes of the same series.
        assert!(
            prom.wait_for(
                "count_over_time(fjord_operator_reconciliations_total{controller=\"topic\"}[1m])",
                5.0,
                Duration::from_secs(60)
            ),
            "Prometheus never scraped the operator"
        );
        let (checked, empty) = prom.panels_without_data(&dashboard);
        assert!(checked >= 10, "checked {checked} panel queries");
        assert!(empty.is_empty(), "panels without data:\n{}", empty.join("\n"));
    })
    .await
    .unwrap();
}

fn kafka_config(broker: &BrokerProcess) -> rdkafka::config::ClientConfig {
    let mut c = rdkafka::config::ClientConfig::new();
    c.set("bootstrap.servers", broker.bootstrap())
        .set("broker.address.family", "v4");
    c
}

/// Polls a group member subscribed to `topic` until it has `n` records; returns their offsets.
fn consume(mut config: rdkafka::config::ClientConfig, topic: &str, n: usize) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = config
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut offsets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while offsets.len() < n {
        assert!(Instant::now() < deadline, "consumed {} of {n} records", offsets.len());
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            offsets.push(m.expect("no consumer error").offset());
        }
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    // Dropping the consumer closes it, which leaves the group: it is empty for the reset.
    offsets
}

/// A ConsumerGroup offset reset on an empty group: a librdkafka member of the
/// group then resumes from the new offset.
async fn consumer_group_reset(client: &Client, broker: &BrokerProcess) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka_config(broker).create().unwrap();
    for i in 0..10 {
        producer
            .send(
                FutureRecord::<(), _>::to("payments").payload(&format!("payment {i}")),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    let mut member = kafka_config(broker);
    member.set("group.id", "billing").set("auto.offset.reset", "earliest");
    let first = tokio::task::spawn_blocking(move || consume(member, "payments", 10))
        .await
        .unwrap();
    assert_eq!(first, (0..10).collect::<Vec<i64>>());

    let groups: Api<ConsumerGroup> = Api::namespaced(client.clone(), "envtest");
    let group: ConsumerGroup = serde_json::from_value(serde_json::json!({
        "apiVersion": "fjord.dev/v1alpha1", "kind": "ConsumerGroup", "metadata": {"name": "billing"},
        "spec": {"clusterRef": "demo", "groupId": "billing",
                 "offsetReset": {"requestId": "rewind-1", "to": "offset", "offset": 4, "topics": ["payments"]}}
    }))
    .unwrap();
    groups.create(&PostParams::default(), &group).await.unwrap();
    let status = eventually("the reset outcome", || async {
        groups
            .get("billing")
            .await
            .ok()
            .and_then(|g| g.status)
            .filter(|s| s.last_reset_request_id.as_deref() == Some("rewind-1"))
    })
    .await;
    let outcome = status.last_reset_outcome.unwrap_or_default();
    assert!(!outcome.starts_with("failed"), "reset outcome: {outcome}");
    assert!(
        !status.partitions.is_empty() && status.partitions.iter().all(|p| p.committed_offset == 4 && p.lag == 6),
        "status after the reset: {:?}",
        status.partitions
    );

    // No auto.offset.reset fallback: the member must start at the committed offset.
    let mut member = kafka_config(broker);
    member.set("group.id", "billing").set("auto.offset.reset", "error");
    let resumed = tokio::task::spawn_blocking(move || consume(member, "payments", 6))
        .await
        .unwrap();
    assert_eq!(resumed, (4..10).collect::<Vec<i64>>());

    // A reset that cannot happen is a condition, and the resource is not Ready.
    let broken: ConsumerGroup = serde_json::from_value(serde_json::json!({
        "apiVersion": "fjord.dev/v1alpha1", "kind": "ConsumerGroup", "metadata": {"name": "broken"},
        "spec": {"clusterRef": "demo", "groupId": "broken",
                 "offsetReset": {"requestId": "r1", "to": "earliest", "topics": ["no-such-topic"]}}
    }))
    .unwrap();
    groups.create(&PostParams::default(), &broken).await.unwrap();
    let conditions = eventually("the failed reset's conditions", || async {
        let status = groups.get("broken").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False").then_some(status.conditions)
    })
    .await;
    let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "OffsetResetFailed", "{conditions:?}");
    let reset = conditions.iter().find(|c| c.type_ == "OffsetReset").unwrap();
    assert_eq!((reset.status.as_str(), reset.reason.as_str()), ("False", "ResetFailed"));
    assert!(reset.message.contains("no-such-topic"), "{}", reset.message);
}

/// Every object the chart renders with its default values (CRDs included),
/// and the example resources, in order. Err says why helm is unavailable.
fn chart_objects() -> Result<Vec<DynamicObject>, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let installed = Command::new("bash")
        .arg(repo.join("helm/install-helm.sh"))
        .env("HELM_INSTALL_DIR", repo.join(".tools/bin"))
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    if !installed.status.success() {
        return Err(format!(
            "helm could not be installed: {}",
            String::from_utf8_lossy(&installed.stderr)
        ));
    }
    let helm = String::from_utf8(installed.stdout).unwrap().trim().to_string();
    let rendered = Command::new(helm)
        .args(["template", "fjord"])
        .arg(repo.join("helm/fjord"))
        .args(["--namespace", "envtest", "--include-crds"])
        .env("KUBECONFIG", "/dev/null")
        .output()
        .expect("helm runs");
    assert!(
        rendered.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let mut manifests = String::from_utf8(rendered.stdout).unwrap();
    for example in ["cluster.yaml", "topic.yaml", "consumergroup.yaml"] {
        manifests.push_str("\n---\n");
        manifests.push_str(&std::fs::read_to_string(repo.join("helm/fjord/examples").join(example)).unwrap());
    }
    Ok(serde_yaml::Deserializer::from_str(&manifests)
        .map(|document| serde_yaml::Value::deserialize(document).unwrap())
        .filter(|value| !value.is_null())
        .map(|value| serde_yaml::from_value(value).unwrap())
        .collect())
}

/// What the dry run sends, checked without an apiserver: every rendered
/// object has a kind, an API version and a name, and the install is complete.
#[test]
fn the_chart_renders_what_the_dry_run_sends() {
    let objects = match chart_objects() {
        Ok(objects) => objects,
        Err(reason) => return fjord_e2e::skip("the_chart_renders_what_the_dry_run_sends", &reason),
    };
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| {
            let types = o.types.clone().expect("apiVersion and kind");
            GroupVersionKind::try_from(&types).expect("a valid apiVersion");
            assert!(o.metadata.name.is_some(), "{} without a name", types.kind);
            types.kind
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    for kind in [
        "Cluster",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "ConsumerGroup",
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "Topic",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
}

/// Every object of [`chart_objects`] passes a server-side dry run
/// (server-side apply, so the CRDs installed above count as unchanged
/// rather than as conflicts).
async fn chart_dry_run(client: &Client) {
    use kube::discovery::{Discovery, Scope};
    let objects = match chart_objects() {
        Ok(objects) => objects,
        Err(reason) => return fjord_e2e::skip("operator_against_a_real_apiserver (chart dry run)", &reason),
    };
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    for object in &objects {
        let types = object.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).unwrap();
        let name = object.metadata.name.clone().expect("a name");
        let (resource, capabilities) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("the apiserver serves {gvk:?} ({name})"));
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), "envtest", &resource),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply("fjord-envtest").dry_run().force(),
            &Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| panic!("server-side dry run of {} {name}: {e}", types.kind));
    }
}
