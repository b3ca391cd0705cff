//! Topic administration through the Kafka admin APIs (librdkafka's AdminClient)
//! and through Fjord's admin gRPC API, and per-topic configs taking effect.

mod common;

use std::time::Duration;

use common::raw::Raw;
use common::TestBroker;
use fjord_proto::admin::v1 as pb;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::{
    ApiKey, DescribeClusterRequest, DescribeConfigsRequest, IncrementalAlterConfigsRequest, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_admin_apis_manage_topics_and_configs() {
    let b = TestBroker::start(&[]).await;
    let admin = b.admin();
    let opts = AdminOptions::new();

    // validate_only creates nothing; a replication factor above the one broker is refused.
    let t = NewTopic::new("admin-a", 3, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
    admin
        .create_topics(&[t], &AdminOptions::new().validate_only(true))
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    assert!(!b.broker().ctx.controller.image().topics.contains_key("admin-a"));
    let t = NewTopic::new("admin-a", 3, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
    admin.create_topics(&[t], &opts).await.unwrap()[0].as_ref().unwrap();
    let res = admin
        .create_topics(&[NewTopic::new("admin-b", 1, TopicReplication::Fixed(3))], &opts)
        .await
        .unwrap();
    assert_eq!(
        res[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::InvalidReplicationFactor
    );
    let res = admin
        .create_topics(&[NewTopic::new("admin-a", 1, TopicReplication::Fixed(1))], &opts)
        .await
        .unwrap();
    assert_eq!(res[0].as_ref().unwrap_err().1, RDKafkaErrorCode::TopicAlreadyExists);
    let res = admin
        .create_topics(
            &[NewTopic::new("admin-c", 1, TopicReplication::Fixed(1)).set("retention.ms", "soon")],
            &opts,
        )
        .await
        .unwrap();
    assert_eq!(res[0].as_ref().unwrap_err().1, RDKafkaErrorCode::InvalidConfig);

    // DescribeConfigs: the override is DYNAMIC_TOPIC_CONFIG, the rest come from defaults.
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic("admin-a")], &opts)
        .await
        .unwrap();
    let resource = described[0].as_ref().unwrap();
    let retention = resource.get("retention.ms").unwrap();
    assert_eq!(retention.value.as_deref(), Some("3600000"));
    assert_eq!(retention.source, rdkafka::admin::ConfigSource::DynamicTopic);
    let segment = resource.get("segment.bytes").unwrap();
    assert_eq!(segment.value.as_deref(), Some("1073741824"));
    assert!(segment.is_default);

    // AlterConfigs replaces the topic's overrides, and the log sees the new config.
    let alter = AlterConfig::new(ResourceSpecifier::Topic("admin-a")).set("segment.bytes", "1048576");
    admin.alter_configs(&[alter], &opts).await.unwrap()[0].as_ref().unwrap();
    let overrides = b.broker().ctx.controller.image().topics["admin-a"].configs.clone();
    assert_eq!(
        overrides.into_iter().collect::<Vec<_>>(),
        vec![("segment.bytes".to_string(), "1048576".to_string())]
    );
    assert_eq!(
        b.broker()
            .ctx
            .replicas
            .get("admin-a", 2)
            .unwrap()
            .config()
            .segment_bytes,
        1_048_576
    );

    // CreatePartitions grows, never shrinks.
    admin
        .create_partitions(&[NewPartitions::new("admin-a", 5)], &opts)
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    assert!(b.broker().ctx.replicas.get("admin-a", 4).is_ok());
    let res = admin
        .create_partitions(&[NewPartitions::new("admin-a", 2)], &opts)
        .await
        .unwrap();
    assert_eq!(res[0].as_ref().unwrap_err().1, RDKafkaErrorCode::InvalidPartitions);

    // DeleteRecords moves the low watermark.
    let producer = b.producer(&[]);
    for i in 0..10 {
        producer
            .send(
                FutureRecord::<str, _>::to("admin-a")
                    .payload(&format!("{i}"))
                    .partition(0),
                WAIT,
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("admin-a", 0, Offset::Offset(6)).unwrap();
    admin.delete_records(&tpl, &opts).await.unwrap();
    let consumer = b.consumer(&[]);
    assert_eq!(consumer.fetch_watermarks("admin-a", 0, WAIT).unwrap(), (6, 10));

    // DeleteTopics removes the topic and its data.
    let dir = b.dir.path().join("admin-a-0");
    assert!(dir.exists());
    admin.delete_topics(&["admin-a"], &opts).await.unwrap()[0]
        .as_ref()
        .unwrap();
    assert!(!dir.exists(), "partition directories are removed");
    let res = admin.delete_topics(&["admin-a"], &opts).await.unwrap();
    assert_eq!(
        res[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::UnknownTopicOrPartition
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_configs_describe_and_alter_dynamically() {
    let b = TestBroker::start(&[("num.partitions", "2")]).await;
    let mut raw = Raw::connect(&b.bootstrap).await;
    let s = |v: &str| StrBytes::from_string(v.to_string());
    let alter = IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
        .with_resource_type(4)
        .with_resource_name(s(""))
        .with_configs(vec![AlterableConfig::default()
            .with_name(s("log.retention.ms"))
            .with_value(Some(s("5000")))])]);
    match raw
        .request(
            ApiKey::IncrementalAlterConfigs,
            1,
            RequestKind::IncrementalAlterConfigs(alter),
        )
        .await
        .unwrap()
    {
        ResponseKind::IncrementalAlterConfigs(r) => assert_eq!(r.responses[0].error_code, 0),
        other => panic!("{other:?}"),
    }
    let readonly = IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
        .with_resource_type(4)
        .with_resource_name(s("0"))
        .with_configs(vec![AlterableConfig::default()
            .with_name(s("node.id"))
            .with_value(Some(s("7")))])]);
    match raw
        .request(
            ApiKey::IncrementalAlterConfigs,
            1,
            RequestKind::IncrementalAlterConfigs(readonly),
        )
        .await
        .unwrap()
    {
        ResponseKind::IncrementalAlterConfigs(r) => {
            assert_eq!(
                r.responses[0].error_code,
                kafka_protocol::error::ResponseError::InvalidConfig.code()
            )
        }
        other => panic!("{other:?}"),
    }
    b.create_topic("dyn", 1, &[]).await;
    assert_eq!(
        b.broker().ctx.replicas.get("dyn", 0).unwrap().config().retention_ms,
        5000,
        "new default applies"
    );

    let describe = DescribeConfigsRequest::default()
        .with_include_synonyms(true)
        .with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(s("0")),
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("dyn")),
        ]);
    match raw
        .request(ApiKey::DescribeConfigs, 4, RequestKind::DescribeConfigs(describe))
        .await
        .unwrap()
    {
        ResponseKind::DescribeConfigs(r) => {
            let broker = &r.results[0].configs;
            let retention = broker.iter().find(|c| c.name.as_str() == "log.retention.ms").unwrap();
            assert_eq!(
                (
                    retention.value.as_ref().unwrap().as_str(),
                    retention.config_source,
                    retention.read_only
                ),
                ("5000", 3, false)
            );
            let partitions = broker.iter().find(|c| c.name.as_str() == "num.partitions").unwrap();
            assert_eq!(
                (
                    partitions.value.as_ref().unwrap().as_str(),
                    partitions.config_source,
                    partitions.read_only
                ),
                ("2", 4, true)
            );
            let topic = &r.results[1].configs;
            let retention = topic.iter().find(|c| c.name.as_str() == "retention.ms").unwrap();
            assert_eq!(retention.config_source, 3, "inherited from the dynamic broker default");
            assert_eq!(retention.synonyms[0].name.as_str(), "log.retention.ms");
        }
        other => panic!("{other:?}"),
    }
    match raw
        .request(
            ApiKey::DescribeCluster,
            1,
            RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        )
        .await
        .unwrap()
    {
        ResponseKind::DescribeCluster(r) => {
            assert_eq!(r.brokers.len(), 1);
            assert_eq!(r.brokers[0].port as u16, b.broker().kafka_addr.port());
            assert_eq!(r.cluster_id.as_str(), b.broker().ctx.controller.image().cluster_id);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_configs_take_effect() {
    let b = TestBroker::start(&[]).await;
    b.create_topic(
        "stamped",
        1,
        &[
            ("message.timestamp.type", "LogAppendTime"),
            ("max.message.bytes", "2000"),
        ],
    )
    .await;
    let producer = b.producer(&[("linger.ms", "0")]);
    let before = fjord_broker::log::segment::now_ms();
    producer
        .send(
            FutureRecord::<str, str>::to("stamped")
                .payload("small")
                .timestamp(1_000),
            WAIT,
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let big = "x".repeat(5000);
    let err = producer
        .send(FutureRecord::<str, _>::to("stamped").payload(&big), WAIT)
        .await
        .map_err(|(e, _)| e)
        .unwrap_err();
    assert_eq!(
        err,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    );
    let consumer = b.consumer(&[]);
    let got = common::consume(&consumer, "stamped", 1, Offset::Beginning, 1, WAIT);
    let ts = got[0].timestamp.unwrap();
    assert!(ts >= before, "LogAppendTime replaces the client's timestamp: {ts}");
}

/// acks=all is refused with NOT_ENOUGH_REPLICAS while the ISR (this broker)
/// is smaller than the topic's min.insync.replicas, and nothing is appended;
/// acks=1 still succeeds, and the metrics flag the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_insync_replicas_refuses_acks_all_when_the_isr_is_smaller() {
    let b = TestBroker::start(&[]).await;
    b.create_topic("durable", 1, &[("min.insync.replicas", "2")]).await;
    let all = b.producer(&[("acks", "all"), ("retries", "0"), ("linger.ms", "0")]);
    let err = all
        .send(FutureRecord::<str, str>::to("durable").payload("safe"), WAIT)
        .await
        .map_err(|(e, _)| e)
        .unwrap_err();
    assert_eq!(err, KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas));
    let one = b.producer(&[("acks", "1"), ("linger.ms", "0")]);
    let offset = one
        .send(FutureRecord::<str, str>::to("durable").payload("leader only"), WAIT)
        .await
        .map_err(|(e, _)| e)
        .unwrap()
        .offset;
    assert_eq!(offset, 0, "the refused acks=all record was not appended");
    let text = b.broker().ctx.metrics.render(&b.broker().ctx.replicas);
    for needle in [
        "fjord_partition_under_min_isr{partition=\"0\",topic=\"durable\"} 1",
        "fjord_partition_under_replicated{partition=\"0\",topic=\"durable\"} 0",
        "fjord_partition_isr_size{partition=\"0\",topic=\"durable\"} 1",
        "fjord_partition_offline{partition=\"0\",topic=\"durable\"} 0",
        "fjord_isr_shrinks_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Lowering the requirement lifts the refusal (legacy AlterConfigs replaces the topic's overrides).
    let alter = AlterConfig::new(ResourceSpecifier::Topic("durable")).set("min.insync.replicas", "1");
    b.admin().alter_configs(&[alter], &AdminOptions::new()).await.unwrap()[0]
        .as_ref()
        .unwrap();
    let offset = all
        .send(FutureRecord::<str, str>::to("durable").payload("safe"), WAIT)
        .await
        .map_err(|(e, _)| e)
        .unwrap()
        .offset;
    assert_eq!(offset, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_admin_api_manages_topics() {
    let b = TestBroker::start(&[]).await;
    let mut client = pb::admin_client::AdminClient::connect(format!("http://{}", b.broker().admin_addr))
        .await
        .unwrap();
    let cluster = client
        .describe_cluster(pb::DescribeClusterRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cluster.brokers[0].port as u16, b.broker().kafka_addr.port());
    assert!(!cluster.version.is_empty());

    let created = client
        .create_topic(pb::CreateTopicRequest {
            name: "grpc".into(),
            partitions: 2,
            replication_factor: 1,
            configs: [("cleanup.policy".to_string(), "delete".to_string())].into(),
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.partition_states.len(), 2);
    assert_eq!(created.effective_configs["retention.ms"], "604800000");
    let dup = client
        .create_topic(pb::CreateTopicRequest {
            name: "grpc".into(),
            partitions: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    let bad = client
        .create_topic(pb::CreateTopicRequest {
            name: "bad name".into(),
            partitions: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("illegal character"), "{}", bad.message());

    let producer = b.producer(&[]);
    producer
        .send(FutureRecord::<str, str>::to("grpc").payload("x").partition(1), WAIT)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let described = client
        .describe_topic(pb::DescribeTopicRequest { name: "grpc".into() })
        .await
        .unwrap()
        .into_inner();
    let p1 = &described.partition_states[1];
    assert_eq!(
        (p1.log_end_offset, p1.high_watermark, p1.leader, p1.isr.clone()),
        (1, 1, 0, vec![0])
    );

    let grown = client
        .create_partitions(pb::CreatePartitionsRequest {
            name: "grpc".into(),
            count: 4,
            validate_only: false,
        })
        .await
        .unwrap();
    assert_eq!(grown.into_inner().partitions, 4);
    let shrink = client
        .create_partitions(pb::CreatePartitionsRequest {
            name: "grpc".into(),
            count: 1,
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(shrink.code(), tonic::Code::FailedPrecondition);

    let altered = client
        .alter_topic_configs(pb::AlterTopicConfigsRequest {
            name: "grpc".into(),
            ops: vec![pb::ConfigOp {
                name: "retention.ms".into(),
                op: pb::config_op::Op::Set as i32,
                value: Some("1000".into()),
            }],
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(altered.configs["retention.ms"], "1000");
    let invalid = client
        .alter_topic_configs(pb::AlterTopicConfigsRequest {
            name: "grpc".into(),
            ops: vec![pb::ConfigOp {
                name: "segment.bytes".into(),
                op: pb::config_op::Op::Set as i32,
                value: Some("-1".into()),
            }],
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);

    let topics = client
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics;
    assert_eq!(topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["grpc"]);
    client
        .delete_topic(pb::DeleteTopicRequest { name: "grpc".into() })
        .await
        .unwrap();
    let gone = client
        .describe_topic(pb::DescribeTopicRequest { name: "grpc".into() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_traffic() {
    let b = TestBroker::start(&[]).await;
    b.create_topic("metered", 1, &[]).await;
    let producer = b.producer(&[]);
    producer
        .send(FutureRecord::<str, str>::to("metered").payload("hello"), WAIT)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let text = b.broker().ctx.metrics.render(&b.broker().ctx.replicas);
    for needle in [
        "fjord_messages_in_total{topic=\"metered\"} 1",
        "fjord_log_end_offset{partition=\"0\",topic=\"metered\"} 1",
        "fjord_requests_total{api=\"Produce\"}",
        "fjord_request_latency_seconds_bucket{api=\"Produce\"",
        "fjord_active_connections",
        "fjord_log_segments{partition=\"0\",topic=\"metered\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}
