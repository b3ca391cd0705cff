//! Metadata: brokers, topics and partition leaders; auto-creates topics.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::{authorized, str, Apis};
use crate::controller::TopicImage;
use crate::error::Error;

pub async fn handle(apis: &Apis, request: MetadataRequest, version: i16) -> MetadataResponse {
    let node = BrokerId(apis.node_id());
    // Fields are only set from the version that has them: the codec refuses others.
    let brokers: Vec<MetadataResponseBroker> = apis
        .live_brokers()
        .into_iter()
        .map(|b| {
            // Fields are only set from the version that has them: the codec refuses others.
            let rack = (version >= 1 && !b.rack.is_empty()).then(|| str(b.rack.clone()));
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(str(b.host))
                .with_port(b.port)
                .with_rack(rack)
        })
        .collect();
    let auto_create = apis.controller.effective_broker_config().auto_create_topics_enable
        && (version < 4 || request.allow_auto_topic_creation);

    let topics = match request.topics {
        // v0: an empty list means all topics; v1+: null means all topics.
        None => all_topics(apis, version),
        Some(list) if list.is_empty() && version == 0 => all_topics(apis, version),
        Some(list) => {
            let mut topics = Vec::with_capacity(list.len());
            for t in list {
                topics.push(match t.name {
                    Some(name) => describe_by_name(apis, name, auto_create, version).await,
                    None => match apis.controller.image().topic_by_id(t.topic_id) {
                        Some(topic) => describe(apis, topic, version),
                        None => MetadataResponseTopic::default()
                            .with_topic_id(t.topic_id)
                            .with_error_code(ResponseError::UnknownTopicId.code()),
                    },
                });
            }
            topics
        }
    };
    let mut topics = topics;
    if version >= 8 {
        let operations = authorized::when(request.include_topic_authorized_operations, authorized::TOPIC);
        for t in topics.iter_mut().filter(|t| t.error_code == 0) {
            t.topic_authorized_operations = operations;
        }
    }
    let response = MetadataResponse::default().with_brokers(brokers).with_topics(topics);
    // Asked for through Metadata up to v10; DescribeCluster from then on.
    let response = if (8..=10).contains(&version) {
        response.with_cluster_authorized_operations(authorized::when(
            request.include_cluster_authorized_operations,
            authorized::CLUSTER,
        ))
    } else {
        response
    };
    let response = if version >= 1 {
        // As KRaft brokers do, clients are given a live broker as "controller":
        // any broker forwards admin changes to the active controller, while a
        // controller that just died would hold a client's request until it times out.
        response.with_controller_id(node)
    } else {
        response
    };
    if version >= 2 {
        response.with_cluster_id(Some(str(apis.controller.image().cluster_id.clone())))
    } else {
        response
    }
}

fn all_topics(apis: &Apis, version: i16) -> Vec<MetadataResponseTopic> {
    apis.controller
        .image()
        .topics
        .values()
        .map(|t| describe(apis, t, version))
        .collect()
}

async fn describe_by_name(apis: &Apis, name: TopicName, auto_create: bool, version: i16) -> MetadataResponseTopic {
    if let Some(topic) = apis.controller.image().topics.get(name.as_str()) {
        return describe(apis, topic, version);
    }
    // The internal topic is created as the group coordinator needs it
    // (offsets.topic.num.partitions, compacted), never with topic defaults:
    // groups would otherwise map to partitions that do not exist.
    if auto_create && name.as_str() == crate::group::OFFSETS_TOPIC {
        super::coordinator::ensure_offsets_topic(apis).await;
        if let Some(topic) = apis.controller.image().topics.get(name.as_str()) {
            return describe(apis, topic, version);
        }
    }
    let error = if auto_create {
        match apis
            .controller
            .create_topic(name.as_str(), -1, -1, BTreeMap::new(), None, false)
            .await
        {
            Ok(topic) => {
                tracing::info!(topic = %topic.name, partitions = topic.partitions, "auto-created topic");
                return describe(apis, &topic, version);
            }
            // Lost a race with another creator: describe what is there now.
            Err(Error::TopicAlreadyExists(_)) => match apis.controller.image().topics.get(name.as_str()) {
                Some(topic) => return describe(apis, topic, version),
                None => ResponseError::UnknownTopicOrPartition.code(),
            },
            Err(e) => e.code(),
        }
    } else if crate::controller::image::validate_topic_name(name.as_str()).is_err() {
        ResponseError::InvalidTopicException.code()
    } else {
        ResponseError::UnknownTopicOrPartition.code()
    };
    MetadataResponseTopic::default()
        .with_name(Some(name))
        .with_error_code(error)
}

fn describe(apis: &Apis, topic: &TopicImage, version: i16) -> MetadataResponseTopic {
    let image = apis.controller.image();
    let partitions = (0..topic.partitions)
        .map(|p| {
            let replicas = topic.replicas(p);
            let state = topic.state(p);
            let leader = state.and_then(|s| s.leader());
            let isr: Vec<BrokerId> = state.map_or(vec![], |s| s.isr.iter().map(|id| BrokerId(*id)).collect());
            let offline: Vec<BrokerId> = replicas
                .iter()
                .filter(|id| !image.is_live(**id))
                .map(|id| BrokerId(*id))
                .collect();
            let partition = MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_error_code(if leader.is_some() {
                    0
                } else {
                    ResponseError::LeaderNotAvailable.code()
                })
                .with_leader_id(BrokerId(leader.unwrap_or(-1)))
                .with_replica_nodes(replicas.iter().map(|id| BrokerId(*id)).collect())
                .with_isr_nodes(isr);
            let partition = if version >= 5 {
                partition.with_offline_replicas(offline)
            } else {
                partition
            };
            if version >= 7 {
                partition.with_leader_epoch(state.map_or(-1, |s| s.leader_epoch))
            } else {
                partition
            }
        })
        .collect();
    let response = MetadataResponseTopic::default()
        .with_name(Some(TopicName(str(topic.name.clone()))))
        .with_is_internal(version >= 1 && topic.name.starts_with("__"))
        .with_partitions(partitions);
    if version >= 10 {
        response.with_topic_id(topic.id)
    } else {
        response
    }
}
