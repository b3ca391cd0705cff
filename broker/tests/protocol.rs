//! Every API at every version the broker advertises answers with a response
//! that decodes at that version (the codec refuses fields a version lacks).

mod common;

use common::raw::{batch, produce_request, Raw};
use common::TestBroker;
use fjord_broker::api::Apis;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn request(api: ApiKey, v: i16, topic_id: uuid::Uuid) -> RequestKind {
    let tag = format!("sweep-{}-{v}", api as i16);
    match api {
        ApiKey::Produce => produce_request("sweep", 0, batch(2, 8, 1_000)),
        ApiKey::Fetch => {
            let t = FetchTopic::default().with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)]);
            let t = if v >= 13 {
                t.with_topic_id(topic_id)
            } else {
                t.with_topic(name("sweep"))
            };
            let missing = FetchTopic::default().with_partitions(vec![FetchPartition::default()
                .with_partition(9)
                .with_partition_max_bytes(100)]);
            let missing = if v >= 13 {
                missing.with_topic_id(uuid::Uuid::new_v4())
            } else {
                missing.with_topic(name("nope"))
            };
            RequestKind::Fetch(
                FetchRequest::default()
                    .with_max_wait_ms(0)
                    .with_min_bytes(1)
                    .with_max_bytes(1 << 20)
                    .with_topics(vec![t, missing]),
            )
        }
        ApiKey::ListOffsets => RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(
            vec![ListOffsetsTopic::default()
            .with_name(name("sweep"))
            .with_partitions(vec![
                ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-1),
                ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-2),
                ListOffsetsPartition::default().with_partition_index(0).with_timestamp(1_000),
                ListOffsetsPartition::default().with_partition_index(5).with_timestamp(-1),
            ])],
        )),
        ApiKey::Metadata => RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name("sweep"))),
            MetadataRequestTopic::default().with_name(Some(name("__internal-looking"))),
        ]))),
        ApiKey::ApiVersions => {
            RequestKind::ApiVersions(ApiVersionsRequest::default().with_client_software_name(if v >= 3 {
                s("sweep")
            } else {
                s("")
            }))
        }
        ApiKey::CreateTopics => {
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(1000).with_topics(vec![
            CreatableTopic::default().with_name(name(&tag)).with_num_partitions(1).with_replication_factor(1),
            CreatableTopic::default().with_name(name("sweep")).with_num_partitions(1).with_replication_factor(1),
        ]))
        }
        ApiKey::DeleteTopics if v >= 6 => RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topics(vec![
            DeleteTopicState::default().with_name(Some(name("never-was"))),
            DeleteTopicState::default().with_topic_id(uuid::Uuid::new_v4()),
        ])),
        ApiKey::DeleteTopics => {
            RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topic_names(vec![name("never-was")]))
        }
        ApiKey::DeleteRecords => RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(
            vec![DeleteRecordsTopic::default()
            .with_name(name("sweep"))
            .with_partitions(vec![DeleteRecordsPartition::default().with_partition_index(0).with_offset(0)])],
        )),
        ApiKey::InitProducerId => RequestKind::InitProducerId(InitProducerIdRequest::default()),
        ApiKey::DescribeConfigs => {
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default().with_resource_type(2).with_resource_name(s("sweep")),
            DescribeConfigsResource::default().with_resource_type(4).with_resource_name(s("0")),
            DescribeConfigsResource::default().with_resource_type(2).with_resource_name(s("missing")),
        ]))
        }
        ApiKey::CreatePartitions => {
            RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_validate_only(true).with_topics(
                vec![
                CreatePartitionsTopic::default().with_name(name("sweep")).with_count(2),
                CreatePartitionsTopic::default().with_name(name("missing")).with_count(2),
            ],
            ))
        }
        ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(
            IncrementalAlterConfigsRequest::default()
                .with_validate_only(true)
                .with_resources(vec![AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("sweep"))
                    .with_configs(vec![AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s("1000")))])]),
        ),
        ApiKey::AlterConfigs => {
            RequestKind::AlterConfigs(AlterConfigsRequest::default().with_validate_only(true).with_resources(
                vec![alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("missing"))],
            ))
        }
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::FindCoordinator if v >= 4 => RequestKind::FindCoordinator(
            FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g1"), s("g2")]),
        ),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(FindCoordinatorRequest::default().with_key(s("g1"))),
        ApiKey::JoinGroup => RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(GroupId(s(&tag)))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(if v >= 1 { 10_000 } else { -1 })
                .with_member_id(s(""))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(bytes::Bytes::new())]),
        ),
        ApiKey::SyncGroup => RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(GroupId(s("nobody")))
                .with_generation_id(1)
                .with_member_id(s("ghost")),
        ),
        ApiKey::Heartbeat => RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(GroupId(s("nobody")))
                .with_generation_id(1)
                .with_member_id(s("ghost")),
        ),
        ApiKey::LeaveGroup if v >= 3 => RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("nobody")))
                .with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(s("ghost"))
                ]),
        ),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("nobody")))
                .with_member_id(s("ghost")),
        ),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(GroupId(s("sweep-group")))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(name("sweep"))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(1)
                            .with_committed_metadata(Some(s("m"))),
                    ])]),
        ),
        ApiKey::OffsetFetch if v >= 8 => RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(
            vec![offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s("sweep-group")))
                .with_topics(None)],
        )),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(
            OffsetFetchRequest::default()
                .with_group_id(GroupId(s("sweep-group")))
                .with_topics(Some(vec![offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(name("sweep"))
                    .with_partition_indexes(vec![0, 1])])),
        ),
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::DescribeGroups => {
            RequestKind::DescribeGroups(DescribeGroupsRequest::default().with_groups(vec![GroupId(s("sweep-group"))]))
        }
        ApiKey::DeleteGroups => {
            RequestKind::DeleteGroups(DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("never"))]))
        }
        ApiKey::OffsetDelete => RequestKind::OffsetDelete(
            OffsetDeleteRequest::default()
                .with_group_id(GroupId(s("sweep-group")))
                .with_topics(vec![offset_delete_request::OffsetDeleteRequestTopic::default()
                    .with_name(name("other"))
                    .with_partitions(vec![
                        offset_delete_request::OffsetDeleteRequestPartition::default().with_partition_index(0),
                    ])]),
        ),
        ApiKey::ElectLeaders => RequestKind::ElectLeaders(
            ElectLeadersRequest::default()
                .with_election_type(0)
                .with_topic_partitions(Some(vec![elect_leaders_request::TopicPartitions::default()
                    .with_topic(name("sweep"))
                    .with_partitions(vec![0])])),
        ),
        ApiKey::OffsetForLeaderEpoch => {
            RequestKind::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default().with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(name("sweep"))
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(if v >= 2 { 0 } else { -1 })
                            .with_leader_epoch(0),
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(7)
                            .with_leader_epoch(0),
                    ]),
            ]))
        }
        ApiKey::AlterPartitionReassignments => RequestKind::AlterPartitionReassignments(
            AlterPartitionReassignmentsRequest::default()
                .with_allow_replication_factor_change(true)
                .with_topics(vec![alter_partition_reassignments_request::ReassignableTopic::default(
                )
                .with_name(name("sweep"))
                .with_partitions(vec![
                    // Cancel, with nothing in progress.
                    alter_partition_reassignments_request::ReassignablePartition::default()
                        .with_partition_index(0)
                        .with_replicas(None),
                ])]),
        ),
        ApiKey::ListPartitionReassignments => {
            RequestKind::ListPartitionReassignments(ListPartitionReassignmentsRequest::default().with_topics(None))
        }
        // A commit marker for a producer with nothing open: written all the same.
        ApiKey::WriteTxnMarkers => RequestKind::WriteTxnMarkers(WriteTxnMarkersRequest::default().with_markers(vec![
            write_txn_markers_request::WritableTxnMarker::default()
                .with_producer_id(ProducerId(9999))
                .with_producer_epoch(0)
                .with_transaction_result(true)
                .with_coordinator_epoch(0)
                .with_topics(vec![write_txn_markers_request::WritableTxnMarkerTopic::default()
                    .with_name(name("sweep"))
                    .with_partition_indexes(vec![0])]),
        ])),
        // The transactional APIs for an id the coordinator never saw.
        // v4 is a partition leader's verification (batched, verify_only).
        ApiKey::AddPartitionsToTxn if v >= 4 => {
            RequestKind::AddPartitionsToTxn(AddPartitionsToTxnRequest::default().with_transactions(vec![
                add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                    .with_transactional_id(TransactionalId(s("sweep-tx")))
                    .with_producer_id(ProducerId(9999))
                    .with_verify_only(true)
                    .with_topics(vec![add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                        .with_name(name("sweep"))
                        .with_partitions(vec![0])]),
            ]))
        }
        ApiKey::AddPartitionsToTxn => RequestKind::AddPartitionsToTxn(
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(s("sweep-tx")))
                .with_v3_and_below_producer_id(ProducerId(9999))
                .with_v3_and_below_topics(vec![add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(name("sweep"))
                    .with_partitions(vec![0])]),
        ),
        ApiKey::AddOffsetsToTxn => RequestKind::AddOffsetsToTxn(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(TransactionalId(s("sweep-tx")))
                .with_producer_id(ProducerId(9999))
                .with_group_id(GroupId(s("sweep-group"))),
        ),
        ApiKey::EndTxn => RequestKind::EndTxn(
            EndTxnRequest::default()
                .with_transactional_id(TransactionalId(s("sweep-tx")))
                .with_producer_id(ProducerId(9999))
                .with_committed(true),
        ),
        ApiKey::TxnOffsetCommit => RequestKind::TxnOffsetCommit(
            TxnOffsetCommitRequest::default()
                .with_transactional_id(TransactionalId(s("sweep-tx")))
                .with_group_id(GroupId(s("sweep-group")))
                .with_producer_id(ProducerId(9999))
                .with_generation_id(-1)
                .with_topics(vec![txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                    .with_name(name("other"))
                    .with_partitions(vec![
                        txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(1),
                    ])]),
        ),
        ApiKey::DescribeTransactions => RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(s("sweep-tx"))]),
        ),
        ApiKey::ListTransactions => RequestKind::ListTransactions(ListTransactionsRequest::default()),
        ApiKey::DescribeProducers => RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(
            vec![describe_producers_request::TopicRequest::default()
                .with_name(name("sweep"))
                .with_partition_indexes(vec![0])],
        )),
        other => panic!("no sweep request for {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_version_answers() {
    let b = TestBroker::start(&[("group.initial.rebalance.delay.ms", "0")]).await;
    b.create_topic("sweep", 1, &[]).await;
    let topic_id = b.broker().ctx.replicas.get("sweep", 0).unwrap().topic_id;
    let mut raw = Raw::connect(&b.bootstrap).await;
    let mut checked = 0;
    for (api, min, max) in Apis::supported_versions() {
        for v in min..=max {
            let body = request(api, v, topic_id);
            let response = raw
                .request(api, v, body)
                .await
                .unwrap_or_else(|e| panic!("{api:?} v{v}: {e:?}"));
            match (&response, api) {
                (ResponseKind::Produce(r), _) => {
                    assert_eq!(r.responses[0].partition_responses[0].error_code, 0, "v{v}")
                }
                (ResponseKind::Fetch(r), _) => {
                    let p = &r.responses[0].partitions[0];
                    assert_eq!(p.error_code, 0, "fetch v{v}");
                    assert!(!p.records.as_ref().unwrap().is_empty(), "fetch v{v} returns records");
                    assert_ne!(r.responses[1].partitions[0].error_code, 0, "fetch v{v} unknown topic");
                }
                (ResponseKind::Metadata(r), _) => {
                    assert_eq!(r.topics[0].error_code, 0);
                    assert_eq!(r.topics[0].partitions.len(), 1);
                }
                (ResponseKind::ListOffsets(r), _) => {
                    let ps = &r.topics[0].partitions;
                    assert!(
                        ps[0].offset > 0 && ps[1].offset == 0 && ps[2].offset == 0,
                        "list offsets v{v}: {ps:?}"
                    );
                    assert_ne!(ps[3].error_code, 0);
                }
                (ResponseKind::ApiVersions(r), _) => assert!(r.api_keys.len() >= 20),
                (ResponseKind::AlterPartitionReassignments(r), _) => assert_eq!(
                    r.responses[0].partitions[0].error_code,
                    ResponseError::NoReassignmentInProgress.code()
                ),
                (ResponseKind::ListPartitionReassignments(r), _) => assert!(r.topics.is_empty()),
                (ResponseKind::WriteTxnMarkers(r), _) => {
                    assert_eq!(r.markers[0].topics[0].partitions[0].error_code, 0, "markers v{v}")
                }
                (ResponseKind::OffsetForLeaderEpoch(r), _) => {
                    let ps = &r.topics[0].partitions;
                    let leo = b.broker().ctx.replicas.get("sweep", 0).unwrap().log_end_offset();
                    assert_eq!(
                        (ps[0].error_code, ps[0].end_offset),
                        (0, leo),
                        "epoch 0 ends at the log end: v{v}"
                    );
                    assert_eq!(ps[1].error_code, ResponseError::UnknownTopicOrPartition.code());
                }
                (ResponseKind::JoinGroup(r), _) => {
                    let expected = if v >= 4 {
                        ResponseError::MemberIdRequired.code()
                    } else {
                        0
                    };
                    assert_eq!(r.error_code, expected, "join v{v}");
                }
                (ResponseKind::Heartbeat(r), _) => assert_eq!(r.error_code, ResponseError::UnknownMemberId.code()),
                (ResponseKind::OffsetCommit(r), _) => {
                    assert_eq!(r.topics[0].partitions[0].error_code, 0, "commit v{v}")
                }
                (ResponseKind::AddPartitionsToTxn(r), _) if v >= 4 => assert_ne!(
                    r.results_by_transaction[0].topic_results[0].results_by_partition[0].partition_error_code, 0,
                    "verify partitions v{v}"
                ),
                (ResponseKind::AddPartitionsToTxn(r), _) => assert_ne!(
                    r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code, 0,
                    "add partitions v{v}"
                ),
                (ResponseKind::EndTxn(r), _) => assert_ne!(r.error_code, 0, "end txn v{v}"),
                (ResponseKind::TxnOffsetCommit(r), _) => assert_eq!(
                    r.topics[0].partitions[0].error_code,
                    ResponseError::UnknownTopicOrPartition.code(),
                    "txn offset commit v{v}"
                ),
                (ResponseKind::DescribeProducers(r), _) => {
                    assert_eq!(r.topics[0].partitions[0].error_code, 0, "describe producers v{v}")
                }
                _ => {}
            }
            checked += 1;
        }
    }
    assert!(checked > 80, "swept {checked} api versions");
}

/// `include_*_authorized_operations` get Kafka's bitfields for a broker
/// without an authorizer (every supported operation), and "not requested"
/// (i32::MIN) when not asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_operations_are_answered_when_asked() {
    const TOPIC_OPS: i32 = 3576;
    const CLUSTER_OPS: i32 = 8096;
    const GROUP_OPS: i32 = 328;
    let b = TestBroker::start(&[]).await;
    b.create_topic("ops", 1, &[]).await;
    let mut raw = Raw::connect(&b.bootstrap).await;
    for (version, asked) in [(8, true), (10, true), (12, true), (12, false)] {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(name("ops")))]))
            .with_include_cluster_authorized_operations(asked && version <= 10)
            .with_include_topic_authorized_operations(asked);
        let ResponseKind::Metadata(r) = raw
            .request(ApiKey::Metadata, version, RequestKind::Metadata(request))
            .await
            .unwrap()
        else {
            panic!("not a metadata response")
        };
        let expected = if asked { TOPIC_OPS } else { i32::MIN };
        assert_eq!(r.topics[0].topic_authorized_operations, expected, "v{version}");
        if version <= 10 {
            assert_eq!(r.cluster_authorized_operations, CLUSTER_OPS, "v{version}");
        }
    }
    for asked in [true, false] {
        let request = DescribeClusterRequest::default().with_include_cluster_authorized_operations(asked);
        let ResponseKind::DescribeCluster(r) = raw
            .request(ApiKey::DescribeCluster, 0, RequestKind::DescribeCluster(request))
            .await
            .unwrap()
        else {
            panic!("not a describe cluster response")
        };
        assert_eq!(
            r.cluster_authorized_operations,
            if asked { CLUSTER_OPS } else { i32::MIN }
        );
    }
    let request = DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(s("nobody-yet"))])
        .with_include_authorized_operations(true);
    let ResponseKind::DescribeGroups(r) = raw
        .request(ApiKey::DescribeGroups, 5, RequestKind::DescribeGroups(request))
        .await
        .unwrap()
    else {
        panic!("not a describe groups response")
    };
    assert_eq!(
        r.groups[0].error_code, 0,
        "an unknown group is described as Dead, as Kafka does"
    );
    assert_eq!(r.groups[0].authorized_operations, GROUP_OPS);
}

/// Kafka's dynamic broker configs that Fjord does not act on yet (SASL,
/// per-listener, thread pools) are accepted as Kafka validates them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_dynamic_broker_configs_are_accepted() {
    use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let b = TestBroker::start(&[]).await;
    let mut raw = Raw::connect(&b.bootstrap).await;
    let alter = |names: &[&str]| {
        RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default().with_resources(
            vec![AlterConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(s(""))
                .with_configs(
                    names
                        .iter()
                        .map(|n| {
                            AlterableConfig::default()
                                .with_name(s(n))
                                .with_config_operation(0)
                                .with_value(Some(s("PLAIN")))
                        })
                        .collect(),
                )],
        ))
    };
    for (names, expected) in [
        (
            &[
                "sasl.enabled.mechanisms",
                "listener.name.internal.sasl.enabled.mechanisms",
            ][..],
            0,
        ),
        (
            &["listener.name.internal.not.a.listener.config"][..],
            ResponseError::InvalidConfig.code(),
        ),
    ] {
        let ResponseKind::IncrementalAlterConfigs(r) = raw
            .request(ApiKey::IncrementalAlterConfigs, 1, alter(names))
            .await
            .unwrap()
        else {
            panic!("not an IncrementalAlterConfigs response")
        };
        assert_eq!(r.responses[0].error_code, expected, "{names:?}");
    }
}

/// A client's Metadata request that auto-creates `__consumer_offsets` gets it
/// as the group coordinator needs it (offsets.topic.num.partitions), never
/// with the topic defaults, or groups would map to partitions that do not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_created_offsets_topic_has_its_own_partition_count() {
    let b = TestBroker::start(&[("num.partitions", "1")]).await;
    let mut raw = Raw::connect(&b.bootstrap).await;
    let request = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name("__consumer_offsets")))
        ]));
    let ResponseKind::Metadata(r) = raw
        .request(ApiKey::Metadata, 12, RequestKind::Metadata(request))
        .await
        .unwrap()
    else {
        panic!("not a metadata response")
    };
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[0].partitions.len(), 50);
    assert!(r.topics[0].is_internal);
}

/// Produces whose answers wait (here on a flush.messages=1 group commit)
/// are delayed operations: a client that pipelines them, with another
/// request between, gets every answer in request order, and the records
/// were appended in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_delayed_produces_are_answered_in_order() {
    let b = TestBroker::start(&[]).await;
    b.create_topic("durable", 1, &[("flush.messages", "1")]).await;
    let mut raw = Raw::connect(&b.bootstrap).await;
    let mut sent = Vec::new();
    let mut bytes = Vec::new();
    for i in 0..6 {
        let (key, body) = if i == 3 {
            (
                ApiKey::ApiVersions,
                RequestKind::ApiVersions(ApiVersionsRequest::default()),
            )
        } else {
            (
                ApiKey::Produce,
                produce_request("durable", 0, batch(10, 100, 1_000 + i)),
            )
        };
        let version = if key == ApiKey::Produce { 9 } else { 0 };
        let (id, frame) = raw.encode(key, version, &body);
        sent.push((id, key, version));
        bytes.extend_from_slice(&frame);
    }
    raw.send_bytes(&bytes).await;
    let mut offsets = Vec::new();
    for (id, key, version) in sent {
        let mut frame = raw.read_frame().await.unwrap();
        let header =
            kafka_protocol::messages::ResponseHeader::decode(&mut frame, key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, id, "answers in request order");
        if let ResponseKind::Produce(r) = ResponseKind::decode(key, &mut frame, version).unwrap() {
            let p = &r.responses[0].partition_responses[0];
            assert_eq!(p.error_code, 0);
            offsets.push(p.base_offset);
        }
    }
    assert_eq!(offsets, vec![0, 10, 20, 30, 40]);
    let part = b.broker().ctx.replicas.get("durable", 0).unwrap();
    assert_eq!(part.recovery_point(), 50, "answered once on disk");
}
