//! Three broker processes in combined mode (broker + controller) form one
//! cluster over the metadata quorum: one cluster id, every broker listed by
//! each, topics created through any broker and placed across all three,
//! librdkafka producing to and consuming from every partition, and a
//! whole-cluster restart that keeps everything.

use std::path::Path;
use std::time::{Duration, Instant};

use fjord_e2e::{free_port, BrokerProcess};
use fjord_proto::admin::v1 as pb;
use pb::admin_client::AdminClient;
use rdkafka::admin::{AdminClient as KafkaAdmin, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    brokers: Vec<BrokerProcess>,
    voters: String,
}

impl Cluster {
    fn launch(dir: &Path, extra: &[(&str, &str)]) -> Cluster {
        let ports: Vec<[u16; 3]> = (0..3).map(|_| [free_port(), free_port(), free_port()]).collect();
        Self::launch_on(dir, &ports, &[], extra)
    }

    /// On the given ports; broker `i` advertises `advertised[i]` to clients
    /// and followers when given (a proxy in front of it).
    fn launch_on(dir: &Path, ports: &[[u16; 3]], advertised: &[u16], extra: &[(&str, &str)]) -> Cluster {
        let voters: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{}", i + 1, p[1]))
            .collect();
        let voters = voters.join(",");
        let brokers = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = (i + 1).to_string();
                let listener = advertised.get(i).map(|port| format!("PLAINTEXT://127.0.0.1:{port}"));
                let mut config: Vec<(&str, &str)> = vec![
                    ("node.id", id.as_str()),
                    ("controller.quorum.voters", voters.as_str()),
                    ("broker.session.timeout.ms", "3000"),
                    ("broker.heartbeat.interval.ms", "500"),
                ];
                if let Some(l) = &listener {
                    config.push(("advertised.listeners", l.as_str()));
                }
                config.extend_from_slice(extra);
                BrokerProcess::launch(&dir.join(format!("node-{}", i + 1)), *p, &config)
            })
            .collect();
        let mut c = Cluster { brokers, voters };
        for b in &mut c.brokers {
            b.wait_ready(WAIT).unwrap();
        }
        c
    }

    fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .filter(|b| b.pid().is_some())
            .map(BrokerProcess::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }
}

async fn admin(b: &BrokerProcess) -> AdminClient<tonic::transport::Channel> {
    AdminClient::connect(format!("http://{}", b.admin)).await.unwrap()
}

async fn describe(b: &BrokerProcess) -> Option<pb::DescribeClusterResponse> {
    let mut a = AdminClient::connect(format!("http://{}", b.admin)).await.ok()?;
    a.describe_cluster(pb::DescribeClusterRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kafka(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("broker.address.family", "v4");
    c
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32, rf: i32) -> Result<(), RDKafkaErrorCode> {
    let admin: KafkaAdmin<DefaultClientContext> = kafka(bootstrap).create().unwrap();
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(rf));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match admin.create_topics(&[t], &opts).await {
        Ok(results) => results[0].clone().map(|_| ()).map_err(|(_, code)| code),
        Err(e) => Err(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)),
    }
}

async fn describe_topic(b: &BrokerProcess, name: &str) -> Option<pb::TopicDescription> {
    admin(b)
        .await
        .describe_topic(pb::DescribeTopicRequest { name: name.into() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// One request encoded and answered with kafka-protocol's codecs over a
/// plain connection (librdkafka acts on KIP-951 hints without showing them,
/// and has no ElectLeaders).
async fn raw_request<Req: kafka_protocol::protocol::Encodable, Resp: kafka_protocol::protocol::Decodable>(
    addr: &str,
    api_key: kafka_protocol::messages::ApiKey,
    version: i16,
    request: &Req,
) -> Resp {
    use bytes::{Buf, BufMut, BytesMut};
    use kafka_protocol::messages::{RequestHeader, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, Encodable};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7);
    let mut body = BytesMut::new();
    header
        .encode(&mut body, api_key.request_header_version(version))
        .unwrap();
    request.encode(&mut body, version).unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await.unwrap();
    let len = stream.read_i32().await.unwrap();
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf).await.unwrap();
    let mut buf = bytes::Bytes::from(buf);
    let header = ResponseHeader::decode(&mut buf, api_key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 7);
    let response = Resp::decode(&mut buf, version).unwrap();
    assert!(!buf.has_remaining());
    response
}

/// One record produced with Produce v10.
async fn raw_produce_v10(addr: &str, topic: &str, partition: i32) -> kafka_protocol::messages::ProduceResponse {
    use bytes::BytesMut;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(bytes::Bytes::from_static(b"hint")),
        headers: Default::default(),
    };
    let mut records = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut records, [&record], &options).unwrap();
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records.freeze()))])]);
    raw_request(addr, ApiKey::Produce, 10, &request).await
}

/// A replica's whole log: its segment files in offset order, concatenated.
fn log_bytes(data_dir: &Path, topic: &str, partition: i32) -> Vec<u8> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    segments.iter().flat_map(|p| std::fs::read(p).unwrap()).collect()
}

/// Waits until every replica of every partition has the same log end, then
/// checks the three logs are byte-identical.
async fn assert_replicas_identical(cluster: &Cluster, topic: &str, partitions: i32) {
    eventually("every replica at the same log end", || async {
        let mut ends = Vec::new();
        for b in &cluster.brokers {
            let t = describe_topic(b, topic).await?;
            ends.push(
                t.partition_states
                    .iter()
                    .map(|p| (p.log_end_offset, p.isr.len()))
                    .collect::<Vec<_>>(),
            );
        }
        (ends.iter().all(|e| e == &ends[0]) && ends[0].iter().all(|(_, isr)| *isr == 3)).then_some(())
    })
    .await;
    for p in 0..partitions {
        let logs: Vec<Vec<u8>> = cluster
            .brokers
            .iter()
            .map(|b| log_bytes(&b.data_dir, topic, p))
            .collect();
        assert!(!logs[0].is_empty());
        assert!(
            logs.iter().all(|l| l == &logs[0]),
            "{topic}-{p}: replica logs differ ({:?} bytes)",
            logs.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
}

/// Reads `topic`'s partitions from the beginning until `want` records are
/// in: each record's index, as `index` takes it from (partition, payload),
/// per partition in log order.
fn read_back(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    want: usize,
    index: impl Fn(i32, &[u8]) -> u64,
) -> Vec<Vec<u64>> {
    let consumer: BaseConsumer = kafka(bootstrap)
        .set("group.id", format!("{topic}-check"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    fjord_e2e::assign_from_beginning(&consumer, topic, partitions);
    let mut read: Vec<Vec<u64>> = vec![Vec::new(); partitions as usize];
    let deadline = Instant::now() + WAIT;
    while read.iter().map(Vec::len).sum::<usize>() < want {
        assert!(
            Instant::now() < deadline,
            "read {} of {want}",
            read.iter().map(Vec::len).sum::<usize>()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            read[m.partition() as usize].push(index(m.partition(), m.payload().unwrap()));
        }
    }
    read
}

/// The index in a "<partition>-<index>" payload.
fn dashed_index(partition: i32, payload: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(payload);
    let (p, i) = text.split_once('-').unwrap();
    assert_eq!(p.parse::<i32>().unwrap(), partition);
    i.parse().unwrap()
}

fn live_ids(d: &pb::DescribeClusterResponse) -> Vec<i32> {
    d.brokers.iter().filter(|b| !b.fenced).map(|b| b.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_form_one_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::launch(tmp.path(), &[]);

    // One cluster id; every broker knows all three, registered and unfenced.
    let mut ids = Vec::new();
    for b in &cluster.brokers {
        let d = eventually("three registered brokers", || async {
            describe(b).await.filter(|d| live_ids(d) == vec![1, 2, 3])
        })
        .await;
        assert!(d.brokers.iter().all(|b| b.controller_voter));
        ids.push(d.cluster_id);
    }
    assert!(ids.iter().all(|id| id == &ids[0] && !id.is_empty()), "{ids:?}");
    // Every broker's metadata lag, as the active controller knows it, from
    // any broker (the others forward DescribeCluster to it): known, caught up.
    for b in &cluster.brokers {
        eventually("every broker's metadata lag known and small", || async {
            describe(b)
                .await
                .filter(|d| d.brokers.len() == 3 && d.brokers.iter().all(|b| (0..=100).contains(&b.metadata_lag)))
        })
        .await;
    }
    // librdkafka sees three brokers from any one of them.
    for b in &cluster.brokers {
        let consumer: BaseConsumer = kafka(&b.bootstrap()).create().unwrap();
        let md = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        let mut seen: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 2, 3], "Metadata from {}", b.bootstrap());
    }

    // A topic created through one broker is placed on all three, whichever is the controller.
    let controller = describe(&cluster.brokers[0]).await.unwrap().controller_id;
    // Node n is brokers[n - 1]: go through one that is not the active controller.
    let via = &cluster.brokers[if controller == 1 { 1 } else { 0 }];
    create_topic(&via.bootstrap(), "spread", 6, 1).await.unwrap();
    let topic = eventually("the topic on every broker", || async {
        let mut last = None;
        for b in &cluster.brokers {
            let mut a = admin(b).await;
            last = Some(
                a.describe_topic(pb::DescribeTopicRequest { name: "spread".into() })
                    .await
                    .ok()?
                    .into_inner(),
            );
        }
        last
    })
    .await;
    assert_eq!(topic.partitions, 6);
    // Bad input: more replicas than brokers, nothing created.
    assert_eq!(
        create_topic(&cluster.bootstrap(), "too-wide", 1, 4).await,
        Err(RDKafkaErrorCode::InvalidReplicationFactor)
    );

    // Explicit replica assignments, on create and on growth; bad ones refused, nothing changed.
    let kadmin: KafkaAdmin<DefaultClientContext> = kafka(&cluster.bootstrap()).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for bad in [&[&[1, 1][..]][..], &[&[1, 9][..]][..]] {
        let t = NewTopic::new("placed", 1, TopicReplication::Variable(bad));
        let result = kadmin.create_topics(&[t], &opts).await.unwrap();
        assert_eq!(
            result[0].clone().map_err(|(_, code)| code),
            Err(RDKafkaErrorCode::InvalidReplicaAssignment),
            "{bad:?}"
        );
    }
    let t = NewTopic::new("placed", 1, TopicReplication::Variable(&[&[2, 1]]));
    kadmin.create_topics(&[t], &opts).await.unwrap()[0].clone().unwrap();
    let grow = rdkafka::admin::NewPartitions::new("placed", 3).assign(&[&[3, 1], &[3, 3]]);
    let result = kadmin.create_partitions(&[grow], &opts).await.unwrap();
    assert_eq!(
        result[0].clone().map_err(|(_, code)| code),
        Err(RDKafkaErrorCode::InvalidReplicaAssignment)
    );
    let grow = rdkafka::admin::NewPartitions::new("placed", 3).assign(&[&[3, 1], &[1, 3]]);
    kadmin.create_partitions(&[grow], &opts).await.unwrap()[0]
        .clone()
        .unwrap();
    let placed = eventually("placed grown", || async {
        describe_topic(&cluster.brokers[0], "placed")
            .await
            .filter(|t| t.partitions == 3)
    })
    .await;
    let replicas: Vec<Vec<i32>> = placed.partition_states.iter().map(|p| p.replicas.clone()).collect();
    assert_eq!(replicas, vec![vec![2, 1], vec![3, 1], vec![1, 3]]);
    let leaders: Vec<i32> = placed.partition_states.iter().map(|p| p.leader).collect();
    assert_eq!(leaders, vec![2, 3, 1], "preferred replicas lead");

    // librdkafka finds each partition's leader and round-trips keyed records in order.
    let producer: FutureProducer = kafka(&cluster.bootstrap()).set("acks", "all").create().unwrap();
    for i in 0..60 {
        let key = format!("k{}", i % 6);
        producer
            .send(
                FutureRecord::to("spread")
                    .key(&key)
                    .payload(&format!("{i}"))
                    .partition(i % 6),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let consumer: BaseConsumer = kafka(&cluster.bootstrap())
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some("spread"), Duration::from_secs(10))
        .unwrap();
    let mut leaders: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.leader()).collect();
    leaders.sort_unstable();
    leaders.dedup();
    assert_eq!(leaders, vec![1, 2, 3], "partitions lead on every broker");
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition_offset("spread", p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got: Vec<Vec<i32>> = vec![Vec::new(); 6];
    let deadline = Instant::now() + WAIT;
    while got.iter().map(Vec::len).sum::<usize>() < 60 {
        assert!(Instant::now() < deadline, "consumed {got:?}");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v: i32 = std::str::from_utf8(m.payload().unwrap()).unwrap().parse().unwrap();
            got[m.partition() as usize].push(v);
        }
    }
    for (p, values) in got.iter().enumerate() {
        let expected: Vec<i32> = (0..60).filter(|i| i % 6 == p as i32).collect();
        assert_eq!(values, &expected, "partition {p} in order");
    }

    // A topic config and the group's committed offsets, to survive the restart.
    admin(&cluster.brokers[2])
        .await
        .alter_topic_configs(pb::AlterTopicConfigsRequest {
            name: "spread".into(),
            ops: vec![pb::ConfigOp {
                name: "retention.ms".into(),
                op: 0,
                value: Some("86400000".into()),
            }],
            validate_only: false,
        })
        .await
        .unwrap();
    let mut committed = TopicPartitionList::new();
    for p in 0..6 {
        committed.add_partition_offset("spread", p, Offset::Offset(10)).unwrap();
    }
    consumer
        .commit(&committed, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    drop(consumer);
    // The admin API answers for the group from any broker: forwarded to its
    // coordinator, with log end offsets from each partition's leader.
    for b in &cluster.brokers {
        let mut a = admin(b).await;
        let g = a
            .describe_group(pb::DescribeGroupRequest {
                group_id: "reader".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut ends: Vec<(i32, i64, i64)> = g
            .offsets
            .iter()
            .map(|o| (o.partition, o.committed_offset, o.log_end_offset))
            .collect();
        ends.sort_unstable();
        assert_eq!(
            ends,
            (0..6).map(|p| (p, 10, 10)).collect::<Vec<_>>(),
            "from broker {}",
            b.admin
        );
        assert_eq!(g.total_lag, 0);
        let listed = a.list_groups(pb::ListGroupsRequest {}).await.unwrap().into_inner();
        assert!(listed.groups.iter().any(|g| g.group_id == "reader"), "{listed:?}");
        // Every partition's offsets as its leader has them, whichever broker answers.
        let t = describe_topic(b, "spread").await.unwrap();
        let offsets: Vec<(i64, i64, i64)> = t
            .partition_states
            .iter()
            .map(|p| (p.log_start_offset, p.log_end_offset, p.high_watermark))
            .collect();
        assert_eq!(offsets, vec![(0, 10, 10); 6], "from broker {}", b.admin);
    }
    // Resets by timestamp and by offset, asked of one broker for partitions led by all three.
    use pb::reset_group_offsets_request::To;
    for (to, value, expected) in [
        (To::Timestamp, 0, 0),
        (To::Latest, 0, 10),
        (To::Offset, 7, 7),
        (To::Offset, 10, 10),
    ] {
        let g = admin(&cluster.brokers[1])
            .await
            .reset_group_offsets(pb::ResetGroupOffsetsRequest {
                group_id: "reader".into(),
                to: to as i32,
                topics: vec!["spread".into()],
                value,
            })
            .await
            .unwrap()
            .into_inner();
        let committed: Vec<i64> = g.offsets.iter().map(|o| o.committed_offset).collect();
        assert_eq!(committed, vec![expected; 6], "reset {to:?} {value}");
    }

    // Whole-cluster restart keeps the cluster id, topics, configs, committed offsets and records.
    for b in &mut cluster.brokers {
        b.stop();
    }
    for b in &mut cluster.brokers {
        b.relaunch();
    }
    for b in &mut cluster.brokers {
        b.wait_ready(WAIT).unwrap();
    }
    let d = eventually("the cluster back", || async {
        describe(&cluster.brokers[0])
            .await
            .filter(|d| live_ids(d) == vec![1, 2, 3])
    })
    .await;
    assert_eq!(d.cluster_id, ids[0]);
    let t = describe_topic(&cluster.brokers[0], "spread").await.unwrap();
    assert_eq!(t.configs.get("retention.ms").map(String::as_str), Some("86400000"));
    let consumer: BaseConsumer = kafka(&cluster.bootstrap())
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let offsets = eventually("the committed offsets after the restart", || async {
        consumer
            .committed_offsets(committed.clone(), Duration::from_secs(5))
            .ok()
    })
    .await;
    for e in offsets.elements() {
        assert_eq!(e.offset(), Offset::Offset(10), "{e:?}");
    }
    consumer.assign(&tpl).unwrap();
    let mut count = 0;
    let deadline = Instant::now() + WAIT;
    while count < 60 {
        assert!(Instant::now() < deadline, "consumed {count} after restart");
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
            count += 1;
        }
    }
}

/// A voter whose node id is not among the voters exits with a clear error.
#[test]
fn a_node_id_outside_the_voters_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = BrokerProcess::launch(
        &tmp.path().join("bad"),
        [free_port(), free_port(), free_port()],
        &[
            ("node.id", "7"),
            ("controller.quorum.voters", "1@127.0.0.1:1,2@127.0.0.1:2"),
        ],
    );
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = b.exited() {
            break s;
        }
        assert!(Instant::now() < deadline, "the broker should refuse to start");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    assert!(
        b.log_text().contains("not among controller.quorum.voters"),
        "{}",
        b.log_text()
    );
}

/// SIGKILL of the active controller: another takes over and topic creation
/// works again within seconds; the dead broker is fenced after its session
/// times out, then restarts, registers again and catches up on the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_failover_and_fencing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::launch(tmp.path(), &[]);
    let d = eventually("three registered brokers", || async {
        describe(&cluster.brokers[0])
            .await
            .filter(|d| live_ids(d) == vec![1, 2, 3])
    })
    .await;
    let controller = d.controller_id;
    let killed = (controller - 1) as usize;
    let survivor = (killed + 1) % 3;
    // Three partitions, one led by each broker.
    create_topic(&cluster.bootstrap(), "rf3", 3, 3).await.unwrap();
    let before = eventually("rf3 led everywhere", || async {
        describe_topic(&cluster.brokers[survivor], "rf3")
            .await
            .filter(|t| t.partition_states.len() == 3 && t.partition_states.iter().all(|p| p.leader > 0))
    })
    .await;
    let led_by_killed = before
        .partition_states
        .iter()
        .find(|p| p.leader == controller)
        .expect("the controller leads one partition")
        .clone();
    // A produce to a broker that does not lead the partition says where the
    // leader is (KIP-951): its id, epoch and listener.
    let elsewhere = (killed + 1) % 3;
    let response = raw_produce_v10(&cluster.brokers[elsewhere].bootstrap(), "rf3", led_by_killed.partition).await;
    let p = &response.responses[0].partition_responses[0];
    assert_eq!(p.error_code, kafka_protocol::ResponseError::NotLeaderOrFollower.code());
    assert_eq!(
        (p.current_leader.leader_id.0, p.current_leader.leader_epoch),
        (controller, led_by_killed.leader_epoch)
    );
    let endpoint = &response.node_endpoints[0];
    assert_eq!(
        format!("{}:{}", endpoint.host.as_str(), endpoint.port),
        cluster.brokers[killed].bootstrap()
    );

    // Acknowledged by all three replicas before the kill.
    let producer: FutureProducer = kafka(&cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    for i in 0..30 {
        producer
            .send(
                FutureRecord::to("rf3")
                    .key("k")
                    .payload(&format!("before-{i}"))
                    .partition(i % 3),
                Duration::from_secs(30),
            )
            .await
            .expect("acks=all before the kill");
    }

    let killed_at = Instant::now();
    cluster.brokers[killed].kill9();
    let bootstrap = cluster.brokers[survivor].bootstrap();
    eventually("a topic created after the controller died", || async {
        match create_topic(&bootstrap, "after-failover", 1, 1).await {
            // An earlier attempt's answer may have been lost on the way.
            Ok(()) | Err(RDKafkaErrorCode::TopicAlreadyExists) => Some(()),
            Err(_) => None,
        }
    })
    .await;
    println!(
        "controller failover: topic creation worked again {:?} after SIGKILL",
        killed_at.elapsed()
    );
    let d = describe(&cluster.brokers[survivor]).await.unwrap();
    assert_ne!(d.controller_id, controller, "a new active controller");
    eventually("the killed broker fenced", || async {
        describe(&cluster.brokers[survivor])
            .await
            .filter(|d| d.brokers.iter().any(|b| b.id == controller && b.fenced))
    })
    .await;
    // Its partition has a new leader from the ISR, in a new epoch, and the
    // killed broker out of the ISR; clients carry on with acks=all on every
    // partition, the records acknowledged before the kill all there.
    let during = eventually("a new leader from the ISR", || async {
        describe_topic(&cluster.brokers[survivor], "rf3").await.filter(|t| {
            let p = &t.partition_states[led_by_killed.partition as usize];
            p.leader > 0 && p.leader != controller && !p.isr.contains(&controller)
        })
    })
    .await;
    let p = during.partition_states[led_by_killed.partition as usize].clone();
    assert!(led_by_killed.isr.contains(&p.leader), "{p:?} from {led_by_killed:?}");
    assert!(p.leader_epoch > led_by_killed.leader_epoch);
    assert_eq!(p.offline_replicas, vec![controller]);
    assert!(!p.offline && p.under_replicated);
    for q in 0..3 {
        producer
            .send(
                FutureRecord::to("rf3")
                    .key("k")
                    .payload("while one is down")
                    .partition(q),
                Duration::from_secs(20),
            )
            .await
            .expect("every partition takes records with a broker down");
    }
    cluster.brokers[killed].relaunch();
    cluster.brokers[killed].wait_ready(WAIT).unwrap();
    eventually("the restarted broker unfenced", || async {
        describe(&cluster.brokers[survivor])
            .await
            .filter(|d| live_ids(d) == vec![1, 2, 3])
    })
    .await;
    let mut a = admin(&cluster.brokers[killed]).await;
    a.describe_topic(pb::DescribeTopicRequest {
        name: "after-failover".into(),
    })
    .await
    .expect("the restarted broker has the topic created while it was down");
    // Back: it follows the new leader and rejoins the ISR; every partition
    // holds all 33 acknowledged records, read from their leaders.
    eventually("the restarted broker back in every ISR", || async {
        describe_topic(&cluster.brokers[survivor], "rf3")
            .await
            .filter(|t| t.partition_states.iter().all(|p| p.isr.len() == 3))
    })
    .await;
    let consumer: BaseConsumer = kafka(&cluster.bootstrap())
        .set("group.id", "after-failover")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for q in 0..3 {
        tpl.add_partition_offset("rf3", q, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut values = Vec::new();
    let deadline = Instant::now() + WAIT;
    while values.len() < 33 {
        assert!(Instant::now() < deadline, "read {values:?}");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            values.push(String::from_utf8_lossy(m.payload().unwrap()).to_string());
        }
    }
    for i in 0..30 {
        assert!(values.contains(&format!("before-{i}")), "before-{i} lost: {values:?}");
    }

    // Kafka's preferred leader election (ElectLeaders): the returned broker,
    // first replica and in sync again, leads its partition once more.
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafka_protocol::messages::{ApiKey, ElectLeadersRequest, ElectLeadersResponse, TopicName};
    let request = ElectLeadersRequest::default()
        .with_election_type(0)
        .with_timeout_ms(10_000)
        .with_topic_partitions(Some(vec![TopicPartitions::default()
            .with_topic(TopicName(kafka_protocol::protocol::StrBytes::from_static_str("rf3")))
            .with_partitions(vec![0, 1, 2])]));
    let response: ElectLeadersResponse = raw_request(
        &cluster.brokers[survivor].bootstrap(),
        ApiKey::ElectLeaders,
        2,
        &request,
    )
    .await;
    let codes: Vec<(i32, i16)> = response.replica_election_results[0]
        .partition_result
        .iter()
        .map(|r| (r.partition_id, r.error_code))
        .collect();
    let not_needed = kafka_protocol::ResponseError::ElectionNotNeeded.code();
    for (partition, code) in &codes {
        let expected = if *partition == led_by_killed.partition {
            0
        } else {
            not_needed
        };
        assert_eq!(*code, expected, "partition {partition}: {codes:?}");
    }
    let t = describe_topic(&cluster.brokers[survivor], "rf3").await.unwrap();
    assert_eq!(t.partition_states[led_by_killed.partition as usize].leader, controller);
}

/// SIGTERM: the broker's controlled shutdown fences it and moves leadership
/// off before it exits, long before its session would time out. A broker that
/// is not a voter (process.roles=broker) follows the quorum as a learner,
/// registers and is listed like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controlled_shutdown_and_a_broker_only_node() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::launch(tmp.path(), &[("broker.session.timeout.ms", "60000")]);
    let mut fourth = BrokerProcess::launch(
        &tmp.path().join("node-4"),
        [free_port(), free_port(), free_port()],
        &[
            ("node.id", "4"),
            ("process.roles", "broker"),
            ("controller.quorum.voters", cluster.voters.as_str()),
        ],
    );
    fourth.wait_ready(WAIT).unwrap();
    let d = eventually("four registered brokers", || async {
        describe(&fourth).await.filter(|d| live_ids(d) == vec![1, 2, 3, 4])
    })
    .await;
    let learner = d.brokers.iter().find(|b| b.id == 4).unwrap();
    assert!(!learner.controller_voter);
    let consumer: BaseConsumer = kafka(&fourth.bootstrap()).create().unwrap();
    let md = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    assert_eq!(
        md.brokers().len(),
        4,
        "Metadata from the broker-only node lists all four"
    );
    create_topic(&fourth.bootstrap(), "spread4", 8, 1).await.unwrap();
    let topic = eventually("spread4 led on all four", || async {
        describe_topic(&cluster.brokers[0], "spread4").await.filter(|t| {
            let mut leaders: Vec<i32> = t.partition_states.iter().map(|p| p.leader).collect();
            leaders.sort_unstable();
            leaders.dedup();
            leaders == vec![1, 2, 3, 4]
        })
    })
    .await;
    assert_eq!(topic.partitions, 8);

    // Stop a broker that is not the active controller; the session is 60 s,
    // so only the controlled shutdown can have fenced it this soon.
    let controller = describe(&cluster.brokers[0]).await.unwrap().controller_id;
    let stopped = (1..=3).find(|id| *id != controller).unwrap();
    let started = Instant::now();
    cluster.brokers[(stopped - 1) as usize].stop();
    let survivor = &cluster.brokers[(controller - 1) as usize];
    let d = eventually("the stopped broker fenced", || async {
        describe(survivor)
            .await
            .filter(|d| d.brokers.iter().any(|b| b.id == stopped && b.fenced))
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "fenced by controlled shutdown"
    );
    assert_eq!(
        d.brokers.iter().find(|b| b.id == stopped).map(|b| b.leader_count),
        Some(0)
    );
    let t = describe_topic(survivor, "spread4").await.unwrap();
    assert!(t.partition_states.iter().all(|p| p.leader != stopped), "{t:?}");

    // min.insync.replicas=2 with one of two replicas down: acks=all is
    // refused with NOT_ENOUGH_REPLICAS (nothing appended), acks=1 is taken.
    let kadmin: KafkaAdmin<DefaultClientContext> = kafka(&survivor.bootstrap()).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let placed = [controller, stopped];
    let assignment = [&placed[..]];
    let topic = NewTopic::new("min2", 1, TopicReplication::Variable(&assignment)).set("min.insync.replicas", "2");
    kadmin.create_topics(&[topic], &opts).await.unwrap()[0].clone().unwrap();
    let strict: FutureProducer = kafka(&survivor.bootstrap())
        .set("acks", "all")
        .set("message.timeout.ms", "3000")
        .create()
        .unwrap();
    let refused = strict
        .send(FutureRecord::to("min2").key("k").payload("x"), Duration::from_secs(10))
        .await;
    // librdkafka retries NOT_ENOUGH_REPLICAS (retriable) until its timeout;
    // the broker counts each refusal.
    assert!(refused.is_err());
    let (_, metrics) = fjord_e2e::http_get(survivor.metrics, "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fjord_produce_errors_total{error=\"19\",topic=\"min2\"}")),
        "NOT_ENOUGH_REPLICAS (19) counted"
    );
    let relaxed: FutureProducer = kafka(&survivor.bootstrap()).set("acks", "1").create().unwrap();
    relaxed
        .send(FutureRecord::to("min2").key("k").payload("y"), Duration::from_secs(10))
        .await
        .expect("acks=1 does not need the ISR");
    let t = describe_topic(survivor, "min2").await.unwrap();
    assert_eq!(
        t.partition_states[0].log_end_offset, 1,
        "the refused record was never appended"
    );
    fourth.stop();
}

/// Kafka's promise under fire: an idempotent acks=all producer writes to six
/// RF 3 partitions (min.insync.replicas=2) without pause while brokers are
/// killed with SIGKILL and restarted one after another. Every acknowledged
/// record is there afterwards, once, in order per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_broker_kills_under_load() {
    use std::sync::{Arc, Mutex};

    let tmp = tempfile::tempdir().unwrap();
    // Followers fall out of the ISR after 1 s behind; brokers are fenced after 6 s.
    let mut cluster = Cluster::launch(
        tmp.path(),
        &[
            ("replica.lag.time.max.ms", "1000"),
            ("broker.session.timeout.ms", "6000"),
        ],
    );
    eventually("three registered brokers", || async {
        describe(&cluster.brokers[0])
            .await
            .filter(|d| live_ids(d) == vec![1, 2, 3])
    })
    .await;
    let kadmin: KafkaAdmin<DefaultClientContext> = kafka(&cluster.bootstrap()).create().unwrap();
    let topic = NewTopic::new("durable", 6, TopicReplication::Fixed(3)).set("min.insync.replicas", "2");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    kadmin.create_topics(&[topic], &opts).await.unwrap()[0].clone().unwrap();

    let acked: Arc<Mutex<Vec<Vec<u64>>>> = Arc::new(Mutex::new(vec![Vec::new(); 6]));
    let stop = fjord_e2e::StopFlag::default();
    let _stop_on_failure = stop.guard();
    let producer: FutureProducer = kafka(&cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "120000")
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let writers: Vec<_> = (0..6)
        .map(|p| {
            let (producer, acked, stop) = (producer.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                let mut failures = 0;
                while !stop.is_stopped() {
                    let payload = format!("{p}-{i}");
                    let sent = producer
                        .send(
                            FutureRecord::to("durable").key("k").payload(&payload).partition(p),
                            Duration::from_secs(120),
                        )
                        .await;
                    match sent {
                        Ok(_) => acked.lock().unwrap()[p as usize].push(i),
                        Err((e, _)) => {
                            failures += 1;
                            eprintln!("partition {p}: record {i} not acknowledged: {e}");
                            // A producer in a fatal state fails at once: never spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    i += 1;
                }
                failures
            })
        })
        .collect();
    let total = |acked: &Arc<Mutex<Vec<Vec<u64>>>>| acked.lock().unwrap().iter().map(Vec::len).sum::<usize>();
    let wait_for_more = |n: usize| {
        let acked = acked.clone();
        async move {
            let target = total(&acked) + n;
            let deadline = Instant::now() + WAIT;
            while total(&acked) < target {
                assert!(Instant::now() < deadline, "acks stalled at {}", total(&acked));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for_more(300).await;
    // Kill each broker in turn under load; the others carry on and it returns.
    for victim in [0usize, 1, 2] {
        let before: Vec<usize> = acked.lock().unwrap().iter().map(Vec::len).collect();
        let killed_at = Instant::now();
        cluster.brokers[victim].kill9();
        // Failover: until every partition took a record again.
        let deadline = Instant::now() + WAIT;
        while acked
            .lock()
            .unwrap()
            .iter()
            .zip(&before)
            .any(|(now, then)| now.len() <= *then)
        {
            assert!(Instant::now() < deadline, "a partition took nothing after the kill");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "failover: broker {} SIGKILLed, every partition acknowledged again after {:?}",
            victim + 1,
            killed_at.elapsed()
        );
        wait_for_more(300).await;
        cluster.brokers[victim].relaunch();
        cluster.brokers[victim].wait_ready(WAIT).unwrap();
        eventually("every ISR whole again", || async {
            describe_topic(&cluster.brokers[(victim + 1) % 3], "durable")
                .await
                .filter(|t| t.partition_states.iter().all(|p| p.isr.len() == 3))
        })
        .await;
        wait_for_more(100).await;
    }
    // A follower paused past replica.lag.time.max.ms (but not its session)
    // leaves the ISRs it follows in, and returns to them once resumed.
    let paused = 1usize;
    cluster.brokers[paused].pause();
    let watcher = &cluster.brokers[(paused + 1) % 3];
    let shrunk = eventually("the paused follower out of an ISR", || async {
        describe_topic(watcher, "durable").await.filter(|t| {
            t.partition_states
                .iter()
                .any(|p| !p.isr.contains(&((paused + 1) as i32)))
        })
    })
    .await;
    cluster.brokers[paused].resume();
    println!(
        "ISR shrink while paused: {:?}",
        shrunk
            .partition_states
            .iter()
            .map(|p| p.isr.clone())
            .collect::<Vec<_>>()
    );
    eventually("the resumed follower back in every ISR", || async {
        describe_topic(watcher, "durable")
            .await
            .filter(|t| t.partition_states.iter().all(|p| p.isr.len() == 3))
    })
    .await;
    wait_for_more(100).await;
    stop.stop();
    for w in writers {
        let failures = w.await.unwrap();
        assert_eq!(
            failures, 0,
            "records not acknowledged (the producer should retry through failovers)"
        );
    }
    let acked = acked.lock().unwrap().clone();
    println!(
        "acks=all under three SIGKILLs: {} records acknowledged",
        acked.iter().map(Vec::len).sum::<usize>()
    );

    let want: usize = acked.iter().map(Vec::len).sum();
    let read = read_back(&cluster.bootstrap(), "durable", 6, want, dashed_index);
    for p in 0..6 {
        assert_eq!(
            read[p], acked[p],
            "partition {p}: every acknowledged record, once, in order"
        );
    }
    assert_replicas_identical(&cluster, "durable", 6).await;
}

/// Divergence: the leader appends records no follower fetched (they are
/// paused), then dies. A follower takes over and takes writes; the old leader
/// returns, cuts its unreplicated tail at the new leader's epoch boundary and
/// ends byte-identical to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_leader_cuts_its_divergent_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::launch(tmp.path(), &[]);
    eventually("three registered brokers", || async {
        describe(&cluster.brokers[0])
            .await
            .filter(|d| live_ids(d) == vec![1, 2, 3])
    })
    .await;
    create_topic(&cluster.bootstrap(), "diverge", 1, 3).await.unwrap();
    let all: FutureProducer = kafka(&cluster.bootstrap()).set("acks", "all").create().unwrap();
    for i in 0..10 {
        all.send(
            FutureRecord::to("diverge").key("k").payload(&format!("acked-{i}")),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    }
    let t = describe_topic(&cluster.brokers[0], "diverge").await.unwrap();
    let (leader, epoch) = (t.partition_states[0].leader, t.partition_states[0].leader_epoch);
    let leader_ix = (leader - 1) as usize;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader_ix).collect();
    for f in &followers {
        cluster.brokers[*f].pause();
    }
    // acks=1: on the leader alone.
    let one: FutureProducer = kafka(&cluster.brokers[leader_ix].bootstrap())
        .set("acks", "1")
        .create()
        .unwrap();
    for i in 0..5 {
        one.send(
            FutureRecord::to("diverge")
                .key("k")
                .payload(&format!("unreplicated-{i}")),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    cluster.brokers[leader_ix].kill9();
    for f in &followers {
        cluster.brokers[*f].resume();
    }
    let survivor = &cluster.brokers[followers[0]];
    let t = eventually("a new leader", || async {
        describe_topic(survivor, "diverge")
            .await
            .filter(|t| t.partition_states[0].leader > 0 && t.partition_states[0].leader != leader)
    })
    .await;
    assert!(t.partition_states[0].leader_epoch > epoch);
    let others: FutureProducer = kafka(&survivor.bootstrap())
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    for i in 0..5 {
        others
            .send(
                FutureRecord::to("diverge").key("k").payload(&format!("new-{i}")),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    cluster.brokers[leader_ix].relaunch();
    cluster.brokers[leader_ix].wait_ready(WAIT).unwrap();
    assert_replicas_identical(&cluster, "diverge", 1).await;
    let consumer: BaseConsumer = kafka(&cluster.bootstrap())
        .set("group.id", "diverge-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("diverge", 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut values = Vec::new();
    let deadline = Instant::now() + WAIT;
    while values.len() < 15 {
        assert!(Instant::now() < deadline, "read {values:?}");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            values.push(String::from_utf8_lossy(m.unwrap().payload().unwrap()).to_string());
        }
    }
    // A follower may have received the first unreplicated record in a fetch
    // answered just before it paused; whatever the new leader had stays, the
    // rest of the old leader's tail is gone everywhere (the logs are equal).
    let kept = values.iter().filter(|v| v.starts_with("unreplicated-")).count();
    assert!(kept < 5, "the old leader's tail was cut: {values:?}");
    let expected: Vec<String> = (0..10)
        .map(|i| format!("acked-{i}"))
        .chain((0..kept).map(|i| format!("unreplicated-{i}")))
        .chain((0..5).map(|i| format!("new-{i}")))
        .collect();
    while values.len() < expected.len() {
        assert!(Instant::now() < deadline, "read {values:?}");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            values.push(String::from_utf8_lossy(m.unwrap().payload().unwrap()).to_string());
        }
    }
    assert_eq!(values, expected);
}

/// A group of three librdkafka consumers keeps consuming while the broker
/// coordinating the group (leader of its `__consumer_offsets` partition) is
/// SIGKILLed: the new leader of that partition loads the group from the
/// replicated log, every record is consumed, and no committed offset goes
/// backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_survives_its_coordinator_dying() {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};

    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::launch(tmp.path(), &[("group.initial.rebalance.delay.ms", "0")]);
    eventually("three registered brokers", || async {
        describe(&cluster.brokers[0])
            .await
            .filter(|d| live_ids(d) == vec![1, 2, 3])
    })
    .await;
    create_topic(&cluster.bootstrap(), "work", 6, 3).await.unwrap();
    let producer: FutureProducer = kafka(&cluster.bootstrap())
        .set("acks", "all")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let produce = |from: usize, to: usize| {
        let producer = producer.clone();
        async move {
            for i in from..to {
                producer
                    .send(
                        FutureRecord::to("work").key(&format!("k{i}")).payload(&format!("{i}")),
                        Duration::from_secs(60),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    produce(0, 300).await;

    let seen: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    let stop = fjord_e2e::StopFlag::default();
    let _stop_on_failure = stop.guard();
    let bootstrap = cluster.bootstrap();
    let members: Vec<_> = (0..3)
        .map(|_| {
            let (seen, stop, bootstrap) = (seen.clone(), stop.clone(), bootstrap.clone());
            std::thread::spawn(move || {
                let consumer: BaseConsumer = kafka(&bootstrap)
                    .set("group.id", "survivors")
                    .set("auto.offset.reset", "earliest")
                    .set("auto.commit.interval.ms", "200")
                    .set("session.timeout.ms", "10000")
                    .create()
                    .unwrap();
                consumer.subscribe(&["work"]).unwrap();
                while !stop.is_stopped() {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                        let v: usize = std::str::from_utf8(m.payload().unwrap()).unwrap().parse().unwrap();
                        seen.lock().unwrap().insert(v);
                    }
                }
                consumer.unsubscribe();
            })
        })
        .collect();
    let wait_seen = |n: usize| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while seen.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "consumed {}", seen.lock().unwrap().len());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_seen(300).await;
    let admins: Vec<std::net::SocketAddr> = cluster.brokers.iter().map(|b| b.admin).collect();
    let committed = |b: usize| {
        let addr = admins[b];
        async move {
            let mut a = AdminClient::connect(format!("http://{addr}")).await.ok()?;
            let g = a
                .describe_group(pb::DescribeGroupRequest {
                    group_id: "survivors".into(),
                })
                .await
                .ok()?
                .into_inner();
            let offsets: Vec<(i32, i64)> = g.offsets.iter().map(|o| (o.partition, o.committed_offset)).collect();
            (offsets.len() == 6).then_some(offsets)
        }
    };
    let before = eventually("offsets committed for all six partitions", || committed(0)).await;

    // The coordinator, as FindCoordinator names it.
    let found: FindCoordinatorResponse = raw_request(
        &cluster.brokers[0].bootstrap(),
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default().with_key(kafka_protocol::protocol::StrBytes::from_static_str("survivors")),
    )
    .await;
    let coordinator = (found.node_id.0 - 1) as usize;
    // Commits in flight while the coordinator dies: what OffsetFetch returned
    // before must never be gone after (an offset is returned only once it is
    // replicated).
    let producing = tokio::spawn(produce(300, 600));
    let coordinator_addr = cluster.brokers[coordinator].bootstrap();
    let mut fetched_before: std::collections::BTreeMap<i32, i64> = Default::default();
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_millis(1500) {
        for (p, offset) in offset_fetch(&coordinator_addr, "survivors").await {
            let max = fetched_before.entry(p).or_insert(offset);
            *max = (*max).max(offset);
        }
    }
    cluster.brokers[coordinator].kill9();
    producing.await.unwrap();
    let survivor = (coordinator + 1) % 3;
    let first_after = eventually("the group's offsets on the new coordinator", || committed(survivor)).await;
    for (p, a) in &first_after {
        let b = fetched_before.get(p).copied().unwrap_or(-1);
        assert!(
            *a >= b,
            "partition {p}: OffsetFetch had returned {b}, the new coordinator has {a}"
        );
    }
    wait_seen(600).await;
    let after = eventually("offsets past the kill", || async {
        committed(survivor).await.filter(|after| {
            let sum: i64 = after.iter().map(|(_, o)| o).sum();
            sum >= 600
        })
    })
    .await;
    for ((p, b), (_, a)) in before.iter().zip(&after) {
        assert!(a >= b, "partition {p}: committed offset went back from {b} to {a}");
    }
    stop.stop();
    for m in members {
        m.join().unwrap();
    }
}

/// A group's committed offsets by partition, as OffsetFetch v7 returns them
/// (not `require_stable`: the offsets a client may act on).
async fn offset_fetch(addr: &str, group: &str) -> Vec<(i32, i64)> {
    use kafka_protocol::messages::{ApiKey, GroupId, OffsetFetchRequest, OffsetFetchResponse};
    use kafka_protocol::protocol::StrBytes;
    let request = OffsetFetchRequest::default().with_group_id(GroupId(StrBytes::from_string(group.into())));
    let response: OffsetFetchResponse = raw_request(addr, ApiKey::OffsetFetch, 7, &request).await;
    response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .filter(|p| p.error_code == 0)
        .map(|p| (p.partition_index, p.committed_offset))
        .collect()
}

/// Kafka's AlterPartitionReassignments for one partition (`None` cancels).
async fn reassign(addr: &str, topic: &str, partition: i32, target: Option<&[i32]>) -> i16 {
    use kafka_protocol::messages::alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic};
    use kafka_protocol::messages::{
        AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey, BrokerId, TopicName,
    };
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(kafka_protocol::protocol::StrBytes::from_string(topic.into())))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(partition)
                .with_replicas(target.map(|t| t.iter().map(|b| BrokerId(*b)).collect()))])]);
    let response: AlterPartitionReassignmentsResponse =
        raw_request(addr, ApiKey::AlterPartitionReassignments, 0, &request).await;
    assert_eq!(response.error_code, 0);
    response.responses[0].partitions[0].error_code
}

/// Kafka's ListPartitionReassignments: (topic, partition, replicas, adding, removing).
async fn reassignments(addr: &str) -> Vec<(String, i32, Vec<i32>, Vec<i32>, Vec<i32>)> {
    use kafka_protocol::messages::{ApiKey, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse};
    let response: ListPartitionReassignmentsResponse = raw_request(
        addr,
        ApiKey::ListPartitionReassignments,
        0,
        &ListPartitionReassignmentsRequest::default().with_timeout_ms(10_000),
    )
    .await;
    let ids = |v: &[kafka_protocol::messages::BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    ids(&p.replicas),
                    ids(&p.adding_replicas),
                    ids(&p.removing_replicas),
                )
            })
        })
        .collect()
}

/// The bytes of a partition's segment files on one broker (0 when it holds none).
fn replica_bytes(data_dir: &Path, topic: &str, partition: i32) -> u64 {
    let Ok(entries) = std::fs::read_dir(data_dir.join(format!("{topic}-{partition}"))) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// Reassignment as Kafka's tools drive it: a partition moves from brokers
/// {1,2,3} to {2,3,4} while an idempotent acks=all producer writes to it, and
/// every acknowledged record is there afterwards on the new replicas,
/// byte-identical; broker 1 drops its copy. A drain then moves every replica
/// off broker 2 until it hosts nothing. With leader.replication.throttled.rate
/// set, a new replica copies no faster than the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reassignment_drain_and_throttle() {
    use std::sync::{Arc, Mutex};

    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::launch(tmp.path(), &[("replica.lag.time.max.ms", "5000")]);
    let mut fourth = BrokerProcess::launch(
        &tmp.path().join("node-4"),
        [free_port(), free_port(), free_port()],
        &[
            ("node.id", "4"),
            ("process.roles", "broker"),
            ("controller.quorum.voters", cluster.voters.as_str()),
        ],
    );
    fourth.wait_ready(WAIT).unwrap();
    eventually("four registered brokers", || async {
        describe(&fourth).await.filter(|d| live_ids(d) == vec![1, 2, 3, 4])
    })
    .await;
    let kadmin: KafkaAdmin<DefaultClientContext> = kafka(&cluster.bootstrap()).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let placed = [1, 2, 3];
    let assignment = [&placed[..]];
    let topic = NewTopic::new("moving", 1, TopicReplication::Variable(&assignment)).set("min.insync.replicas", "2");
    kadmin.create_topics(&[topic], &opts).await.unwrap()[0].clone().unwrap();

    let acked: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = fjord_e2e::StopFlag::default();
    let _stop_on_failure = stop.guard();
    let producer: FutureProducer = kafka(&format!("{},{}", cluster.bootstrap(), fourth.bootstrap()))
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let writer = {
        let (producer, acked, stop) = (producer.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.is_stopped() {
                let payload = format!("{i:08}{}", "x".repeat(500));
                let sent = producer
                    .send(
                        FutureRecord::to("moving").key("k").payload(&payload).partition(0),
                        Duration::from_secs(60),
                    )
                    .await;
                match sent {
                    Ok(_) => acked.lock().unwrap().push(i),
                    Err((e, _)) => {
                        eprintln!("record {i} not acknowledged: {e}");
                        // A producer in a fatal state fails at once: never spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                i += 1;
            }
        })
    };
    let acked_count = |acked: &Arc<Mutex<Vec<u64>>>| acked.lock().unwrap().len();
    let wait_for_acks = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while acked_count(&acked) < n {
                assert!(Instant::now() < deadline, "acks stalled at {}", acked_count(&acked));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for_acks(500).await;

    // Move {1,2,3} -> {2,3,4} under load, through Kafka's API on any broker.
    let addr = fourth.bootstrap();
    assert_eq!(reassign(&addr, "moving", 0, None).await, 85, "nothing to cancel yet");
    assert_eq!(
        reassign(&addr, "moving", 0, Some(&[2, 3, 9])).await,
        39,
        "unknown broker 9"
    );
    assert_eq!(reassign(&addr, "moving", 0, Some(&[2, 3, 4])).await, 0);
    let ongoing = reassignments(&addr).await;
    println!("reassignments in progress: {ongoing:?}");
    if let Some((_, _, replicas, adding, removing)) = ongoing.first() {
        assert_eq!((replicas, adding, removing), (&vec![2, 3, 4, 1], &vec![4], &vec![1]));
    }
    let moved = eventually("moving-0 on {2,3,4}, all in sync", || async {
        describe_topic(&cluster.brokers[1], "moving").await.filter(|t| {
            let p = &t.partition_states[0];
            p.replicas == vec![2, 3, 4] && p.isr.len() == 3 && p.adding_replicas.is_empty()
        })
    })
    .await;
    assert!(reassignments(&addr).await.is_empty());
    println!("reassigned: {:?}", moved.partition_states[0]);
    eventually("broker 1 dropped its copy", || async {
        (!cluster.brokers[0].data_dir.join("moving-0").exists()).then_some(())
    })
    .await;
    let at_move = acked_count(&acked);
    wait_for_acks(at_move + 300).await;

    // Drain broker 2: its replica goes to broker 1, the only one free.
    let mut a = admin(&cluster.brokers[2]).await;
    let drain = a
        .drain_broker(pb::DrainBrokerRequest { broker_id: 2 })
        .await
        .unwrap()
        .into_inner();
    assert!(drain.partitions_moving >= 1, "{drain:?}");
    let d = eventually("broker 2 hosts nothing", || async {
        describe(&cluster.brokers[2])
            .await
            .filter(|d| d.brokers.iter().any(|b| b.id == 2 && b.replica_count == 0))
    })
    .await;
    println!("after the drain: {:?}", d.brokers);
    let drained = describe_topic(&cluster.brokers[2], "moving").await.unwrap();
    assert_eq!(drained.partition_states[0].replicas, vec![1, 3, 4]);
    let at_drain = acked_count(&acked);
    wait_for_acks(at_drain + 300).await;
    stop.stop();
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();

    let read = read_back(&cluster.bootstrap(), "moving", 1, acked.len(), |_, payload| {
        std::str::from_utf8(&payload[..8]).unwrap().parse().unwrap()
    })
    .remove(0);
    // Sent records the producer gave up on are absent; every acknowledged one is there once, in order.
    let read_acked: Vec<u64> = read
        .iter()
        .copied()
        .filter(|i| acked.binary_search(i).is_ok())
        .collect();
    assert_eq!(read_acked, acked, "every acknowledged record, once, in order");
    println!(
        "reassigned and drained under load: {} records acknowledged",
        acked.len()
    );
    let holders = [&cluster.brokers[0], &cluster.brokers[2], &fourth];
    eventually("the three replicas at one log end", || async {
        let mut ends = Vec::new();
        for b in holders {
            ends.push(describe_topic(b, "moving").await?.partition_states[0].log_end_offset);
        }
        (ends.iter().all(|e| *e == ends[0] && *e > 0)).then_some(())
    })
    .await;
    let logs: Vec<Vec<u8>> = holders.iter().map(|b| log_bytes(&b.data_dir, "moving", 0)).collect();
    assert!(logs.iter().all(|l| l == &logs[0]), "replica logs differ");

    // The throttle: 4 MB on broker 3 alone, copied to broker 4 at 512 KB/s.
    let placed = [3];
    let assignment = [&placed[..]];
    let topic = NewTopic::new("bulk", 1, TopicReplication::Variable(&assignment));
    kadmin.create_topics(&[topic], &opts).await.unwrap()[0].clone().unwrap();
    let bulk: FutureProducer = kafka(&cluster.bootstrap()).set("acks", "1").create().unwrap();
    let value = vec![b'b'; 1024];
    let sends: Vec<_> = (0..4096)
        .map(|_| {
            bulk.send(
                FutureRecord::<(), _>::to("bulk").payload(&value).partition(0),
                Duration::from_secs(30),
            )
        })
        .collect();
    for s in sends {
        s.await.unwrap();
    }
    let size = replica_bytes(&cluster.brokers[2].data_dir, "bulk", 0);
    let rate = 512 * 1024u64;
    let rate_text = rate.to_string();
    let throttle = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Broker(3))
        .set("leader.replication.throttled.rate", &rate_text);
    let altered = kadmin.alter_configs(&[throttle], &opts).await.unwrap();
    assert!(altered[0].is_ok(), "{altered:?}");
    let started = Instant::now();
    assert_eq!(reassign(&addr, "bulk", 0, Some(&[3, 4])).await, 0);
    eventually("bulk-0 copied to broker 4", || async {
        describe_topic(&cluster.brokers[0], "bulk")
            .await
            .filter(|t| t.partition_states[0].isr == vec![3, 4] && t.partition_states[0].adding_replicas.is_empty())
    })
    .await;
    let took = started.elapsed().as_secs_f64();
    let copied = replica_bytes(&fourth.data_dir, "bulk", 0);
    println!(
        "throttled copy: {copied} bytes in {took:.1} s = {:.0} KB/s at a {} KB/s throttle",
        copied as f64 / took / 1024.0,
        rate / 1024
    );
    assert!(copied >= size, "copied {copied} of {size}");
    // One second of burst and one fetch (1 MiB) above the rate at most.
    let fastest = (size.saturating_sub(rate + (1 << 20))) as f64 / rate as f64;
    assert!(
        took >= fastest,
        "copied {size} bytes in {took:.1} s; the throttle allows no less than {fastest:.1} s"
    );
    fourth.stop();
}

/// A follower cut off from its leaders (a proxy in front of every broker
/// drops its fetch connections) falls out of the ISRs past
/// replica.lag.time.max.ms while an acks=all producer carries on with the
/// other two replicas, and returns to every ISR once the network heals.
/// Nothing acknowledged is lost and the replicas end byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_its_leaders_leaves_and_rejoins_the_isr() {
    use std::sync::{Arc, Mutex};

    use fjord_e2e::replica_proxy::ReplicaProxy;

    let tmp = tempfile::tempdir().unwrap();
    let ports: Vec<[u16; 3]> = (0..3).map(|_| [free_port(), free_port(), free_port()]).collect();
    // Ports the OS picks, bound at once: nothing can take them before the
    // brokers advertise them.
    let mut proxies = Vec::new();
    for p in &ports {
        proxies.push(ReplicaProxy::start(0, std::net::SocketAddr::from(([127, 0, 0, 1], p[0]))).await);
    }
    let proxy_ports: Vec<u16> = proxies.iter().map(|p| p.addr.port()).collect();
    let cluster = Cluster::launch_on(tmp.path(), &ports, &proxy_ports, &[("replica.lag.time.max.ms", "2000")]);
    eventually("three registered brokers", || async {
        describe(&cluster.brokers[0])
            .await
            .filter(|d| live_ids(d) == vec![1, 2, 3])
    })
    .await;
    let kadmin: KafkaAdmin<DefaultClientContext> = kafka(&cluster.bootstrap()).create().unwrap();
    let topic = NewTopic::new("cut", 3, TopicReplication::Fixed(3)).set("min.insync.replicas", "2");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    kadmin.create_topics(&[topic], &opts).await.unwrap()[0].clone().unwrap();

    let acked: Arc<Mutex<Vec<Vec<u64>>>> = Arc::new(Mutex::new(vec![Vec::new(); 3]));
    let stop = fjord_e2e::StopFlag::default();
    let _stop_on_failure = stop.guard();
    let producer: FutureProducer = kafka(&cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let writers: Vec<_> = (0..3)
        .map(|p| {
            let (producer, acked, stop) = (producer.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.is_stopped() {
                    let payload = format!("{p}-{i}");
                    let record = FutureRecord::to("cut").key("k").payload(&payload).partition(p);
                    match producer.send(record, Duration::from_secs(60)).await {
                        Ok(_) => acked.lock().unwrap()[p as usize].push(i),
                        Err((e, _)) => {
                            eprintln!("partition {p}: record {i} not acknowledged: {e}");
                            // A producer in a fatal state fails at once: never spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let total = |acked: &Arc<Mutex<Vec<Vec<u64>>>>| acked.lock().unwrap().iter().map(Vec::len).sum::<usize>();
    let wait_for_more = |n: usize| {
        let acked = acked.clone();
        async move {
            let target = total(&acked) + n;
            let deadline = Instant::now() + WAIT;
            while total(&acked) < target {
                assert!(Instant::now() < deadline, "acks stalled at {}", total(&acked));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for_more(300).await;

    let victim = 3;
    let cut_at = Instant::now();
    for p in &proxies {
        p.cut_replica(victim);
    }
    let shrunk = eventually("the cut follower out of the ISRs it follows in", || async {
        describe_topic(&cluster.brokers[0], "cut").await.filter(|t| {
            t.partition_states
                .iter()
                .filter(|p| p.leader != victim)
                .all(|p| !p.isr.contains(&victim) && p.isr.len() == 2)
        })
    })
    .await;
    println!(
        "follower {victim} cut off: out of the ISRs after {:?}: {:?}",
        cut_at.elapsed(),
        shrunk
            .partition_states
            .iter()
            .map(|p| (p.leader, p.isr.clone()))
            .collect::<Vec<_>>()
    );
    wait_for_more(300).await;
    let healed_at = Instant::now();
    for p in &proxies {
        p.heal();
    }
    eventually("the follower back in every ISR", || async {
        describe_topic(&cluster.brokers[0], "cut")
            .await
            .filter(|t| t.partition_states.iter().all(|p| p.isr.len() == 3))
    })
    .await;
    println!("healed: back in every ISR after {:?}", healed_at.elapsed());
    let leader_metrics: String = (0..3)
        .filter_map(|i| fjord_e2e::http_get(cluster.brokers[i].metrics, "/metrics").map(|(_, m)| m))
        .collect();
    let counter = |name: &str| -> f64 {
        leader_metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(counter("fjord_isr_shrinks_total") >= 1.0 && counter("fjord_isr_expands_total") >= 1.0);
    wait_for_more(100).await;
    stop.stop();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let want: usize = acked.iter().map(Vec::len).sum();
    let read = read_back(&cluster.bootstrap(), "cut", 3, want, dashed_index);
    for p in 0..3 {
        let kept: Vec<u64> = read[p]
            .iter()
            .copied()
            .filter(|i| acked[p].binary_search(i).is_ok())
            .collect();
        assert_eq!(
            kept, acked[p],
            "partition {p}: every acknowledged record, once, in order"
        );
    }
    println!("cut and healed under load: {want} records acknowledged");
    assert_replicas_identical(&cluster, "cut", 3).await;
}

/// Two of a partition's three replicas down with min.insync.replicas=2
/// (brokers 4 and 5, not voters, so the metadata quorum stays whole): the
/// ISR shrinks to the leader, acks=all is refused with NOT_ENOUGH_REPLICAS
/// and appended nowhere, acks=1 is still taken by the leader; the two
/// return and hold exactly what the leader holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_down_refuse_acks_all_and_append_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::launch(tmp.path(), &[]);
    let mut followers: Vec<BrokerProcess> = (4..=5)
        .map(|id| {
            let id = id.to_string();
            BrokerProcess::launch(
                &tmp.path().join(format!("node-{id}")),
                [free_port(), free_port(), free_port()],
                &[
                    ("node.id", id.as_str()),
                    ("process.roles", "broker"),
                    ("controller.quorum.voters", cluster.voters.as_str()),
                    ("broker.session.timeout.ms", "3000"),
                    ("broker.heartbeat.interval.ms", "500"),
                ],
            )
        })
        .collect();
    for f in &mut followers {
        f.wait_ready(WAIT).unwrap();
    }
    eventually("five registered brokers", || async {
        describe(&cluster.brokers[0])
            .await
            .filter(|d| live_ids(d) == vec![1, 2, 3, 4, 5])
    })
    .await;
    let leader = &cluster.brokers[2];
    let kadmin: KafkaAdmin<DefaultClientContext> = kafka(&leader.bootstrap()).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let placed = [3, 4, 5];
    let assignment = [&placed[..]];
    let topic = NewTopic::new("two-down", 1, TopicReplication::Variable(&assignment)).set("min.insync.replicas", "2");
    kadmin.create_topics(&[topic], &opts).await.unwrap()[0].clone().unwrap();
    let strict: FutureProducer = kafka(&leader.bootstrap())
        .set("acks", "all")
        .set("message.timeout.ms", "4000")
        .create()
        .unwrap();
    strict
        .send(
            FutureRecord::to("two-down").key("k").payload("all three"),
            Duration::from_secs(10),
        )
        .await
        .expect("acks=all with the whole ISR");

    for f in &mut followers {
        f.kill9();
    }
    eventually("the ISR down to the leader", || async {
        describe_topic(leader, "two-down")
            .await
            .filter(|t| t.partition_states[0].isr == vec![3] && t.partition_states[0].leader == 3)
    })
    .await;
    let refused = strict
        .send(
            FutureRecord::to("two-down").key("k").payload("refused"),
            Duration::from_secs(10),
        )
        .await;
    assert!(refused.is_err(), "acks=all below min.insync.replicas");
    let (_, metrics) = fjord_e2e::http_get(leader.metrics, "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fjord_produce_errors_total{error=\"19\",topic=\"two-down\"}")),
        "NOT_ENOUGH_REPLICAS (19) answered"
    );
    let relaxed: FutureProducer = kafka(&leader.bootstrap()).set("acks", "1").create().unwrap();
    relaxed
        .send(
            FutureRecord::to("two-down").key("k").payload("leader only"),
            Duration::from_secs(10),
        )
        .await
        .expect("acks=1 does not need the ISR");
    let t = describe_topic(leader, "two-down").await.unwrap();
    assert_eq!(
        t.partition_states[0].log_end_offset, 2,
        "the refused record was never appended"
    );

    for f in &mut followers {
        f.relaunch();
        f.wait_ready(WAIT).unwrap();
    }
    eventually("both back in the ISR", || async {
        describe_topic(leader, "two-down")
            .await
            .filter(|t| t.partition_states[0].isr.len() == 3)
    })
    .await;
    for f in &followers {
        let end = eventually("the follower at the leader's log end", || async {
            describe_topic(f, "two-down")
                .await
                .map(|t| t.partition_states[0].log_end_offset)
                .filter(|end| *end == 2)
        })
        .await;
        assert_eq!(end, 2);
    }
    let logs: Vec<Vec<u8>> = [&leader.data_dir, &followers[0].data_dir, &followers[1].data_dir]
        .iter()
        .map(|d| log_bytes(d, "two-down", 0))
        .collect();
    assert!(
        logs.iter().all(|l| l == &logs[0]),
        "the replicas hold the same two records"
    );
    for f in &mut followers {
        f.stop();
    }
}

/// The base offsets of a replica's segments, in order.
fn segment_bases(data_dir: &Path, topic: &str, partition: i32) -> Vec<i64> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let mut bases: Vec<i64> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            (path.extension()? == "log").then(|| path.file_stem()?.to_str()?.parse().ok())?
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// DeleteRecords holds across a failover: it is answered once the in-sync
/// followers have taken the leader's new log start (and deleted the segments
/// below it), so the leader's SIGKILL right after brings no deleted record
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_records_stay_deleted_after_the_leader_dies() {
    use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
    use kafka_protocol::messages::{ApiKey, DeleteRecordsRequest, DeleteRecordsResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let tmp = tempfile::tempdir().unwrap();
    // Small segments, so that deleting records deletes whole segments.
    let mut cluster = Cluster::launch(
        tmp.path(),
        &[("log.segment.bytes", "16384"), ("min.insync.replicas", "2")],
    );
    eventually("three registered brokers", || async {
        describe(&cluster.brokers[0])
            .await
            .filter(|d| live_ids(d) == vec![1, 2, 3])
    })
    .await;
    create_topic(&cluster.bootstrap(), "trim", 1, 3).await.unwrap();
    let producer: FutureProducer = kafka(&cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        // One record a batch: the log spans several segments.
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    // Pipelined: the idempotent producer keeps them in order.
    let payloads: Vec<String> = (0..1000).map(|i| format!("0-{i}")).collect();
    let deliveries: Vec<_> = payloads
        .iter()
        .map(|p| {
            producer
                .send_result(FutureRecord::to("trim").key("k").payload(p))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for d in deliveries {
        d.await.unwrap().unwrap();
    }
    let t = eventually("the topic fully in sync", || async {
        describe_topic(&cluster.brokers[0], "trim")
            .await
            .filter(|t| t.partition_states[0].isr.len() == 3)
    })
    .await;
    let leader = t.partition_states[0].leader;
    let leader_ix = (leader - 1) as usize;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader_ix).collect();
    assert!(
        segment_bases(&cluster.brokers[leader_ix].data_dir, "trim", 0)
            .iter()
            .filter(|b| **b < 500)
            .count()
            > 1,
        "several segments below offset 500"
    );

    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("trim")))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(500)])]);
    let addr = cluster.brokers[leader_ix].bootstrap();
    let response: DeleteRecordsResponse = raw_request(&addr, ApiKey::DeleteRecords, 2, &request).await;
    let answer = &response.topics[0].partitions[0];
    assert_eq!((answer.error_code, answer.low_watermark), (0, 500));
    // Answered only once the in-sync followers had deleted too.
    for f in &followers {
        let t = describe_topic(&cluster.brokers[*f], "trim").await.unwrap();
        assert_eq!(t.partition_states[0].log_start_offset, 500, "broker {}", f + 1);
        let below = segment_bases(&cluster.brokers[*f].data_dir, "trim", 0)
            .into_iter()
            .filter(|b| *b <= 500)
            .count();
        assert_eq!(
            below,
            1,
            "broker {}: only the segment holding offset 500 is left",
            f + 1
        );
    }

    cluster.brokers[leader_ix].kill9();
    let survivor = &cluster.brokers[followers[0]];
    let t = eventually("a new leader", || async {
        describe_topic(survivor, "trim")
            .await
            .filter(|t| t.partition_states[0].leader > 0 && t.partition_states[0].leader != leader)
    })
    .await;
    let new_leader = &cluster.brokers[(t.partition_states[0].leader - 1) as usize];
    let t = describe_topic(new_leader, "trim").await.unwrap();
    assert_eq!(t.partition_states[0].log_start_offset, 500);
    let consumer: BaseConsumer = kafka(&cluster.bootstrap())
        .set("group.id", "trim-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (low, high) = consumer.fetch_watermarks("trim", 0, Duration::from_secs(20)).unwrap();
    assert_eq!((low, high), (500, 1000));
    fjord_e2e::assign_from_beginning(&consumer, "trim", 1);
    let deadline = Instant::now() + WAIT;
    let first = loop {
        assert!(Instant::now() < deadline, "no record read after the failover");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            break (m.offset(), dashed_index(0, m.payload().unwrap()));
        }
    };
    assert_eq!(first, (500, 500), "no deleted record is served again");
}

/// A dead broker is fenced long before its session ends (its listener is
/// probed once its followers' connections break or its heartbeats stop), so
/// its partitions get new leaders at once; a broker merely paused for longer
/// than two heartbeats keeps its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_is_fenced_before_its_session_ends_and_a_paused_one_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    // A session far longer than the waits below: only the fast path fences in time.
    let mut cluster = Cluster::launch(tmp.path(), &[("broker.session.timeout.ms", "60000")]);
    eventually("three registered brokers", || async {
        describe(&cluster.brokers[0])
            .await
            .filter(|d| live_ids(d) == vec![1, 2, 3])
    })
    .await;
    create_topic(&cluster.bootstrap(), "fast", 6, 3).await.unwrap();
    eventually("every partition led and in sync", || async {
        describe_topic(&cluster.brokers[0], "fast")
            .await
            .filter(|t| t.partition_states.iter().all(|p| p.leader > 0 && p.isr.len() == 3))
    })
    .await;

    // Paused for six heartbeat intervals: probed, found listening, kept.
    let paused = 1usize;
    cluster.brokers[paused].pause();
    let paused_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < paused_until {
        if let Some(d) = describe(&cluster.brokers[0]).await {
            assert_eq!(live_ids(&d), vec![1, 2, 3], "a paused broker was fenced");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.brokers[paused].resume();

    // The resumed broker may call a Raft election: wait until all three
    // agree on the active controller, then kill a partition leader that is
    // not it (a dead controller costs a Raft election on top).
    let controller = eventually("one active controller", || async {
        let mut ids = Vec::new();
        for b in &cluster.brokers {
            ids.push(describe(b).await?.controller_id);
        }
        (ids.iter().all(|id| *id == ids[0] && *id > 0)).then(|| ids[0])
    })
    .await;
    let t = describe_topic(&cluster.brokers[0], "fast").await.unwrap();
    let victim = t
        .partition_states
        .iter()
        .map(|p| p.leader)
        .find(|l| *l != controller)
        .expect("a partition led by a broker other than the controller");
    let killed_at = Instant::now();
    cluster.brokers[(victim - 1) as usize].kill9();
    let survivor = &cluster.brokers[(victim % 3) as usize];
    eventually("the dead broker's partitions led elsewhere", || async {
        describe_topic(survivor, "fast")
            .await
            .filter(|t| t.partition_states.iter().all(|p| p.leader > 0 && p.leader != victim))
    })
    .await;
    let moved = killed_at.elapsed();
    println!(
        "failover: broker {victim} SIGKILLed (the active controller is {controller}), its leaders moved after {moved:?} (session 60 s)"
    );
    assert!(
        moved < Duration::from_secs(20),
        "leaders moved after {moved:?}: not before the session timeout"
    );
    let fenced = describe(survivor).await.unwrap();
    assert!(!live_ids(&fenced).contains(&victim));
    let producer: FutureProducer = kafka(&survivor.bootstrap())
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    // Every partition takes acks=all records again (none is held back by
    // the dead broker's last fetch).
    for p in 0..6 {
        producer
            .send(
                FutureRecord::to("fast").partition(p).key("k").payload("after"),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
    }
}

/// The consume-transform-produce loop of an exactly-once application, as
/// librdkafka's transactions example runs it: read_committed input, each
/// batch's output and input offsets in one transaction; on an abortable
/// error the transaction is aborted and the input rewound to the committed
/// offsets; on a fatal one (fenced) a new incarnation starts from them.
/// What the exactly-once application is doing, and librdkafka's last log
/// lines of its producer: printed when the application stalls.
#[derive(Clone, Default)]
struct AppTrace {
    step: std::sync::Arc<std::sync::Mutex<(&'static str, Option<Instant>)>>,
    lines: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

impl AppTrace {
    fn step(&self, step: &'static str) {
        *self.step.lock().unwrap() = (step, Some(Instant::now()));
    }

    fn report(&self) -> String {
        let (step, since) = *self.step.lock().unwrap();
        let lines = self.lines.lock().unwrap();
        format!(
            "the application is in {step} for {:?}; its producer's last librdkafka lines:\n{}",
            since.map(|s| s.elapsed()).unwrap_or_default(),
            lines.iter().cloned().collect::<Vec<_>>().join("\n")
        )
    }
}

impl rdkafka::ClientContext for AppTrace {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, millis) = (now.as_secs() % 86_400, now.subsec_millis());
        let mut lines = self.lines.lock().unwrap();
        if lines.len() >= 400 {
            lines.pop_front();
        }
        lines.push_back(format!(
            "{:02}:{:02}:{:02}.{millis:03} {fac} {message}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        ));
    }
}

impl rdkafka::producer::ProducerContext for AppTrace {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

fn exactly_once_app(
    bootstrap: String,
    stop: fjord_e2e::StopFlag,
    progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    trace: AppTrace,
) {
    use rdkafka::error::KafkaError;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let t = Duration::from_secs(30);
    let incarnation = || {
        let consumer: BaseConsumer = kafka(&bootstrap)
            .set("group.id", "eos-app")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let producer: BaseProducer<AppTrace> = kafka(&bootstrap)
            .set("transactional.id", "eos-app-tx")
            .set("transaction.timeout.ms", "20000")
            .set("linger.ms", "5")
            .set("debug", "eos,msg,protocol")
            .create_with_context(trace.clone())
            .unwrap();
        trace.step("init_transactions");
        producer.init_transactions(Duration::from_secs(120)).unwrap();
        (consumer, producer)
    };
    // The input from the group's committed offsets (the beginning when none).
    let rewind = |consumer: &BaseConsumer| {
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset("eos-in", p, Offset::Beginning).unwrap();
        }
        let committed = consumer.committed_offsets(tpl.clone(), t).unwrap_or(tpl);
        let mut from = TopicPartitionList::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            from.add_partition_offset("eos-in", e.partition(), offset).unwrap();
        }
        consumer.assign(&from).unwrap();
    };
    let (mut consumer, mut producer) = incarnation();
    rewind(&consumer);
    while !stop.is_stopped() {
        trace.step("poll");
        let mut batch = Vec::new();
        let until = Instant::now() + Duration::from_millis(100);
        while batch.len() < 25 && Instant::now() < until {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                batch.push((m.partition(), m.offset(), m.payload().unwrap_or_default().to_vec()));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let attempt = (|| -> Result<(), KafkaError> {
            trace.step("begin_transaction and send");
            producer.begin_transaction()?;
            let mut next: std::collections::BTreeMap<i32, i64> = Default::default();
            for (p, o, v) in &batch {
                loop {
                    match producer.send(BaseRecord::<(), [u8]>::to("eos-out").partition(*p).payload(v)) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            producer.poll(Duration::from_millis(10));
                        }
                        Err((e, _)) => return Err(e),
                    }
                }
                next.insert(*p, o + 1);
            }
            let mut offsets = TopicPartitionList::new();
            for (p, o) in &next {
                offsets.add_partition_offset("eos-in", *p, Offset::Offset(*o)).unwrap();
            }
            let cgm = consumer.group_metadata().expect("a group");
            trace.step("send_offsets_to_transaction");
            let started = Instant::now();
            let sent = producer.send_offsets_to_transaction(&offsets, &cgm, t);
            if started.elapsed() > Duration::from_secs(5) || sent.is_err() {
                eprintln!(
                    "exactly-once app: send_offsets_to_transaction took {:?}: {sent:?}",
                    started.elapsed()
                );
            }
            sent?;
            trace.step("commit_transaction");
            loop {
                match producer.commit_transaction(t) {
                    Err(KafkaError::Transaction(e)) if e.is_retriable() && !e.txn_requires_abort() => {
                        eprintln!("exactly-once app: commit: {e}; retrying");
                    }
                    other => return other,
                }
            }
        })();
        match attempt {
            Ok(()) => {
                progress.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                eprintln!("exactly-once app: {e}; aborting");
                trace.step("abort_transaction");
                let _ = producer.abort_transaction(t);
                rewind(&consumer);
            }
            Err(e) => {
                // Fatal for this incarnation (or a state it cannot leave): a
                // new one fences it and resumes from the committed offsets.
                eprintln!("exactly-once app: {e}; starting a new incarnation");
                trace.step("a new incarnation");
                drop((consumer, producer));
                (consumer, producer) = incarnation();
                rewind(&consumer);
            }
        }
    }
}

/// The broker coordinating `group` (FindCoordinator), from `addr`.
async fn group_coordinator(addr: &str, group: &str) -> Option<i32> {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    let found: FindCoordinatorResponse = raw_request(
        addr,
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default().with_key(kafka_protocol::protocol::StrBytes::from_string(group.into())),
    )
    .await;
    (found.error_code == 0).then_some(found.node_id.0)
}

/// Moves `group`'s coordinator off broker `avoid` when it is there: its
/// `__consumer_offsets` partition (Kafka's `abs(hashCode) % 50`) gets another
/// broker as first replica, which a preferred election then makes leader.
/// Whether it moved: the application then needs a commit or two to meet
/// NOT_COORDINATOR at the old one and look the new one up.
async fn move_group_coordinator_off(cluster: &Cluster, group: &str, avoid: i32) -> bool {
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafka_protocol::messages::{ApiKey, ElectLeadersRequest, ElectLeadersResponse, TopicName};
    let addr = cluster.bootstrap().split(',').next().unwrap().to_string();
    if group_coordinator(&addr, group).await != Some(avoid) {
        return false;
    }
    let hash = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
    let partition = hash.checked_abs().unwrap_or(0) % 50;
    let offsets = describe_topic(&cluster.brokers[0], "__consumer_offsets").await.unwrap();
    let state = offsets
        .partition_states
        .iter()
        .find(|p| p.partition == partition)
        .unwrap();
    let replicas = state.replicas.clone();
    let target = replicas.iter().find(|&&b| b != avoid).copied().unwrap();
    let mut order = vec![target];
    order.extend(replicas.iter().filter(|&&b| b != target));
    eprintln!("moving group {group}'s coordinator (__consumer_offsets-{partition}) from broker {avoid} to {target}");
    assert_eq!(reassign(&addr, "__consumer_offsets", partition, Some(&order)).await, 0);
    eventually("the reassignment of the group's partition done", || async {
        reassignments(&addr).await.is_empty().then_some(())
    })
    .await;
    let request = ElectLeadersRequest::default()
        .with_election_type(0)
        .with_timeout_ms(10_000)
        .with_topic_partitions(Some(vec![TopicPartitions::default()
            .with_topic(TopicName(kafka_protocol::protocol::StrBytes::from_static_str(
                "__consumer_offsets",
            )))
            .with_partitions(vec![partition])]));
    let _: ElectLeadersResponse = raw_request(&addr, ApiKey::ElectLeaders, 2, &request).await;
    eventually("the group's coordinator moved", || async {
        (group_coordinator(&addr, group).await == Some(target)).then_some(())
    })
    .await;
    true
}

/// Exactly once under failure: a consume-transform-produce application runs
/// while the leader of an output partition and then the transaction
/// coordinator are SIGKILLed. The output holds every input record exactly
/// once, and the committed input offsets match the output.
///
/// librdkafka (2.12, confluentinc/librdkafka#5511 and #5456) cannot survive
/// one case of this: when the broker it caches as the *group* coordinator is
/// killed and leaves Metadata (as a fenced broker leaves Kafka's), its broker
/// thread is decommissioned and `send_offsets_to_transaction` waits forever
/// for a state change of that broker (its timeout is never checked). Apache
/// Kafka answers the same way, so the test keeps the group's coordinator off
/// the brokers it kills: when it sits on the next victim, the group's
/// `__consumer_offsets` partition is first moved elsewhere (reassignment,
/// then a preferred election) and the application commits through the new
/// coordinator before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_leader_and_coordinator_kills() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};

    const RECORDS: u64 = 6000;
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::launch(tmp.path(), &[]);
    eventually("three registered brokers", || async {
        describe(&cluster.brokers[0])
            .await
            .filter(|d| live_ids(d) == vec![1, 2, 3])
    })
    .await;
    create_topic(&cluster.bootstrap(), "eos-in", 3, 3).await.unwrap();
    create_topic(&cluster.bootstrap(), "eos-out", 3, 3).await.unwrap();
    let producer: FutureProducer = kafka(&cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let values: Vec<String> = (0..RECORDS).map(|i| i.to_string()).collect();
    let deliveries: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            producer
                .send_result(FutureRecord::to("eos-in").partition((i % 3) as i32).key(v).payload(v))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for d in deliveries {
        d.await.unwrap().unwrap();
    }

    let stop = fjord_e2e::StopFlag::default();
    let _stop_on_failure = stop.guard();
    let progress = Arc::new(AtomicU64::new(0));
    let trace = AppTrace::default();
    let app = {
        let (bootstrap, stop, progress, trace) = (cluster.bootstrap(), stop.clone(), progress.clone(), trace.clone());
        std::thread::spawn(move || exactly_once_app(bootstrap, stop, progress, trace))
    };
    // Until the application processed `n` records; on a timeout, what the
    // brokers logged of transactions says where it stuck.
    async fn processed(cluster: &Cluster, progress: &AtomicU64, trace: &AppTrace, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while progress.load(Ordering::Relaxed) < n {
            if Instant::now() >= deadline {
                let txn_lines: Vec<String> = cluster
                    .brokers
                    .iter()
                    .enumerate()
                    .flat_map(|(i, b)| {
                        let text = b.log_text();
                        let lines: Vec<String> = text
                            .lines()
                            .filter(|l| l.contains("::txn") || l.contains("WriteTxnMarkers"))
                            .map(|l| format!("broker {}: {l}", i + 1))
                            .collect();
                        let skip = lines.len().saturating_sub(30);
                        lines.into_iter().skip(skip)
                    })
                    .collect();
                panic!(
                    "the application processed {} of {n}; the brokers' transaction logs:\n{}\n{}",
                    progress.load(Ordering::Relaxed),
                    txn_lines.join("\n"),
                    trace.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Slow the application's progress down to the kills: the first third, then
    // the leader of eos-out's partition 0 dies.
    processed(&cluster, &progress, &trace, RECORDS / 3).await;
    let out = describe_topic(&cluster.brokers[0], "eos-out").await.unwrap();
    let leader = out.partition_states[0].leader;
    let victim = (leader - 1) as usize;
    if move_group_coordinator_off(&cluster, "eos-app", leader).await {
        let moved_at = progress.load(Ordering::Relaxed);
        processed(&cluster, &progress, &trace, (moved_at + 100).min(RECORDS)).await;
    }
    eprintln!("killing broker {leader}, leader of eos-out-0");
    cluster.brokers[victim].kill9();
    let before = progress.load(Ordering::Relaxed);
    processed(&cluster, &progress, &trace, (before + 300).min(RECORDS)).await;
    cluster.brokers[victim].relaunch();
    cluster.brokers[victim].wait_ready(WAIT).unwrap();

    // Then the transaction coordinator of the application's transactional id.
    let any = cluster.brokers.iter().find(|b| b.pid().is_some()).unwrap().bootstrap();
    let found: FindCoordinatorResponse = raw_request(
        &any,
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default()
            .with_key(kafka_protocol::protocol::StrBytes::from_static_str("eos-app-tx"))
            .with_key_type(1),
    )
    .await;
    assert_eq!(found.error_code, 0, "no transaction coordinator");
    let txn_coordinator = found.node_id.0;
    if move_group_coordinator_off(&cluster, "eos-app", txn_coordinator).await {
        let moved_at = progress.load(Ordering::Relaxed);
        processed(&cluster, &progress, &trace, (moved_at + 100).min(RECORDS)).await;
    }
    let coordinator = (txn_coordinator - 1) as usize;
    eprintln!("killing broker {}, the transaction coordinator", found.node_id.0);
    cluster.brokers[coordinator].kill9();
    let before = progress.load(Ordering::Relaxed);
    processed(&cluster, &progress, &trace, (before + 300).min(RECORDS)).await;
    cluster.brokers[coordinator].relaunch();
    cluster.brokers[coordinator].wait_ready(WAIT).unwrap();

    // Every input record processed and committed.
    let bootstrap = cluster.bootstrap();
    let committed_total = || {
        let bootstrap = bootstrap.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let c: BaseConsumer = kafka(&bootstrap).set("group.id", "eos-app").create().unwrap();
                let mut tpl = TopicPartitionList::new();
                for p in 0..3 {
                    tpl.add_partition("eos-in", p);
                }
                let committed = c.committed_offsets(tpl, Duration::from_secs(10)).ok()?;
                let offsets: Vec<i64> = committed
                    .elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    })
                    .collect();
                (offsets.iter().sum::<i64>() == RECORDS as i64).then_some(offsets)
            })
            .await
            .unwrap()
        }
    };
    let committed = eventually("every input offset committed", committed_total).await;
    stop.stop();
    app.join().unwrap();

    // The output, read_committed: every input value exactly once, and each
    // partition holds as many records as its input partition's committed offset.
    let bootstrap = cluster.bootstrap();
    let output = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = kafka(&bootstrap)
            .set("group.id", "eos-check")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        fjord_e2e::assign_from_beginning(&c, "eos-out", 3);
        let mut by_partition: Vec<Vec<u64>> = vec![Vec::new(); 3];
        let mut ended = std::collections::BTreeSet::new();
        let deadline = Instant::now() + WAIT;
        while ended.len() < 3 {
            assert!(Instant::now() < deadline, "eos-out not read to its end");
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let v = std::str::from_utf8(m.payload().unwrap()).unwrap().parse().unwrap();
                    by_partition[m.partition() as usize].push(v);
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    ended.insert(p);
                }
                _ => {}
            }
        }
        by_partition
    })
    .await
    .unwrap();
    let mut all: Vec<u64> = output.iter().flatten().copied().collect();
    all.sort_unstable();
    let duplicates = all.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(duplicates, 0, "records in the output more than once");
    assert_eq!(
        all,
        (0..RECORDS).collect::<Vec<_>>(),
        "every input record in the output once"
    );
    for (p, records) in output.iter().enumerate() {
        assert_eq!(
            records.len() as i64,
            committed[p],
            "output partition {p} against its input's committed offset"
        );
        assert!(
            records.iter().all(|v| v % 3 == p as u64),
            "output partition {p} holds records of another input partition"
        );
    }
    eprintln!(
        "exactly once: {RECORDS} records through a leader kill and a coordinator kill; committed offsets {committed:?}"
    );
}
